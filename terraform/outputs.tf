# What the deploy steps after `terraform apply` need: how to reach the cluster, where to push
# images, the artifact bucket, and the optional datastores' endpoints (null when not created).
# No secret is output: the RDS password stays in Secrets Manager (its ARN is output).

output "cluster_name" {
  description = "EKS cluster name."
  value       = aws_eks_cluster.this.name
}

output "cluster_endpoint" {
  description = "Kubernetes API endpoint."
  value       = aws_eks_cluster.this.endpoint
}

output "kubeconfig_command" {
  description = "Writes a kubeconfig entry for the cluster."
  value       = "aws eks update-kubeconfig --region ${var.region} --name ${aws_eks_cluster.this.name}"
}

output "artifacts_bucket" {
  description = "S3 bucket for artifact spill (read and written by the api and runner ServiceAccounts, deleted from by the dispatcher's)."
  value       = aws_s3_bucket.artifacts.bucket
}

output "artifacts_role_arn" {
  description = "IAM role the api and runner pods get through EKS Pod Identity."
  value       = aws_iam_role.artifacts.arn
}

output "service_accounts" {
  description = "ServiceAccounts in the proofjobs namespace and the AWS role each one gets (null: none)."
  value = {
    (var.api_service_account)        = aws_iam_role.artifacts.arn
    (var.runner_service_account)     = aws_iam_role.artifacts.arn
    (var.dispatcher_service_account) = aws_iam_role.artifacts_sweep.arn
  }
}

output "ecr_registry" {
  description = "ECR registry host, for `docker login` and image names."
  value       = "${data.aws_caller_identity.current.account_id}.dkr.ecr.${var.region}.amazonaws.com"
}

output "ecr_repository_urls" {
  description = "Repository URL of each image."
  value       = { for name, repo in aws_ecr_repository.this : name => repo.repository_url }
}

output "rds_endpoint" {
  description = "PostgreSQL host:port when create_rds is true."
  value       = one(aws_db_instance.postgres[*].endpoint)
}

output "rds_master_user_secret_arn" {
  description = "Secrets Manager secret holding the RDS master user's password, when create_rds is true."
  value       = one(aws_db_instance.postgres[*].master_user_secret[0].secret_arn)
}

output "redis_endpoint" {
  description = "Redis primary endpoint (TLS: use rediss://) when create_elasticache is true."
  value       = one(aws_elasticache_replication_group.redis[*].primary_endpoint_address)
}
