# Every knob of the AWS deployment, each with a default that plans a small, working cluster:
# one CPU node always on, a GPU node group that sits at zero until a GPU stage is queued,
# no managed PostgreSQL/Redis unless asked for.

variable "region" {
  description = "AWS region of every resource (pick one with g6 capacity, e.g. us-east-1, us-west-2)."
  type        = string
  default     = "us-east-1"
}

variable "cluster_name" {
  description = "EKS cluster name; also the prefix of IAM roles, the bucket and the datastores."
  type        = string
  default     = "proofjobs"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,25}$", var.cluster_name))
    error_message = "cluster_name: lower-case letters, digits and '-', 2-26 characters (the bucket prefix may have 37)."
  }
}

variable "kubernetes_version" {
  description = "EKS Kubernetes minor version, pinned (upgrade by changing it, one minor at a time)."
  type        = string
  default     = "1.34"
}

variable "vpc_cidr" {
  description = "CIDR of the VPC; private subnets get /19s, public subnets /24s."
  type        = string
  default     = "10.40.0.0/16"
}

variable "az_count" {
  description = "Availability zones to spread subnets over (2 or 3; more zones, more chance of GPU capacity)."
  type        = number
  default     = 3

  validation {
    condition     = var.az_count >= 2 && var.az_count <= 3
    error_message = "az_count must be 2 or 3."
  }
}

variable "api_public_access_cidrs" {
  description = "CIDRs allowed to reach the public Kubernetes API endpoint."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "admin_principal_arns" {
  description = "Extra IAM role/user ARNs made cluster admins (the identity running terraform always is)."
  type        = list(string)
  default     = []
}

variable "cpu_instance_types" {
  description = "Instance types of the cpu pool (api, dispatcher, add-ons, execute and wrap stages: 4 vCPU/24Gi pods)."
  type        = list(string)
  default     = ["m7i.2xlarge"]
}

variable "cpu_min_size" {
  description = "Minimum cpu nodes; at least 1 so the api, dispatcher and cluster-autoscaler always run."
  type        = number
  default     = 1
}

variable "cpu_desired_size" {
  description = "Initial cpu nodes (cluster-autoscaler owns the count afterwards)."
  type        = number
  default     = 1
}

variable "cpu_max_size" {
  description = "Maximum cpu nodes cluster-autoscaler may scale to."
  type        = number
  default     = 4
}

variable "cpu_disk_size" {
  description = "Root volume size (GiB) of cpu nodes."
  type        = number
  default     = 50
}

variable "gpu_instance_types" {
  description = "GPU instance types (compute capability >= 8.6: g6 = L4, g6e = L40S). Use types of equal vCPU/memory/GPU count: cluster-autoscaler sizes the group from one. xlarge sizes cannot fit the default 4 CPU/24Gi GPU stage pods."
  type        = list(string)
  default     = ["g6.2xlarge"]
}

variable "gpu_max_size" {
  description = "Maximum GPU nodes (the group's minimum is always 0)."
  type        = number
  default     = 4
}

variable "gpu_capacity_type" {
  description = "ON_DEMAND or SPOT for the GPU node group (runners retry interrupted stages)."
  type        = string
  default     = "ON_DEMAND"

  validation {
    condition     = contains(["ON_DEMAND", "SPOT"], var.gpu_capacity_type)
    error_message = "gpu_capacity_type must be ON_DEMAND or SPOT."
  }
}

variable "gpu_disk_size" {
  description = "Root volume size (GiB) of GPU nodes: the CUDA runner image carries ~7 GB of proving keys."
  type        = number
  default     = 150
}

variable "gpus_per_node" {
  description = "GPUs per instance of gpu_instance_types, advertised to cluster-autoscaler for scale-from-zero."
  type        = number
  default     = 1
}

variable "artifact_retention_days" {
  description = "Days after which any object in the artifact bucket expires; keep it at least the dispatcher's PROOFJOBS_PROOF_RETENTION_SECS, or spilled final proofs go first."
  type        = number
  default     = 7
}

variable "intermediate_retention_days" {
  description = "Days after which spilled intermediates (objects tagged proofjobs-class=intermediate) expire, a backstop for the dispatcher's sweep."
  type        = number
  default     = 1
}

variable "ecr_keep_images" {
  description = "Tagged images kept per ECR repository; older ones are expired."
  type        = number
  default     = 20
}

variable "ecr_immutable_tags" {
  description = "Make ECR image tags immutable (then deploy by unique tag or digest, never a moving tag)."
  type        = bool
  default     = false
}

variable "create_rds" {
  description = "Create an RDS PostgreSQL 16 instance for proofjobs (off: bring your own database)."
  type        = bool
  default     = false
}

variable "rds_instance_class" {
  description = "RDS instance class when create_rds is true."
  type        = string
  default     = "db.t4g.medium"
}

variable "rds_deletion_protection" {
  description = "Protect the RDS instance from deletion (turn off before `terraform destroy`)."
  type        = bool
  default     = true
}

variable "create_elasticache" {
  description = "Create an ElastiCache Redis replication group (noeviction, TLS) for proofjobs."
  type        = bool
  default     = false
}

variable "redis_node_type" {
  description = "ElastiCache node type when create_elasticache is true (size it for in-flight artifacts)."
  type        = string
  default     = "cache.r7g.large"
}

variable "namespace" {
  description = "Kubernetes namespace of the proofjobs workloads."
  type        = string
  default     = "proofjobs"
}

variable "api_service_account" {
  description = "ServiceAccount of the api pods (reads and writes the artifact bucket)."
  type        = string
  default     = "proofjobs-api"
}

variable "dispatcher_service_account" {
  description = "ServiceAccount of the dispatcher (its AWS access: deleting objects of the artifact bucket, for the sweep after proofs end)."
  type        = string
  default     = "proofjobs-dispatcher"
}

variable "runner_service_account" {
  description = "ServiceAccount of the stage runner pods (reads and writes the artifact bucket)."
  type        = string
  default     = "proofjobs-runner"
}

variable "tags" {
  description = "Extra tags on every AWS resource."
  type        = map(string)
  default     = {}
}
