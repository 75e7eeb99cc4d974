# The two node pools the dispatcher's stage profiles select by `proofjobs.io/pool`:
# - cpu: always at least one node (api, dispatcher, cluster-autoscaler, coredns, CPU stages);
# - gpu: NVIDIA AMI, tainted nvidia.com/gpu=true:NoSchedule so only GPU stage pods (which
#   tolerate it) land there, and min_size 0 so an idle cluster pays for no GPU.
# Scale-from-zero: cluster-autoscaler must know what a node of an empty group would look like.
# Managed node group labels and taints are not copied to the Auto Scaling group's tags, so the
# node-template tags are put on the group's ASG directly (aws_autoscaling_group_tag below).

data "aws_iam_policy_document" "node_trust" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "node" {
  name               = "${var.cluster_name}-eks-node"
  assume_role_policy = data.aws_iam_policy_document.node_trust.json
}

resource "aws_iam_role_policy_attachment" "node" {
  for_each = toset(["AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy", "AmazonEC2ContainerRegistryReadOnly"])

  role       = aws_iam_role.node.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/${each.value}"
}

resource "aws_eks_node_group" "cpu" {
  cluster_name    = aws_eks_cluster.this.name
  node_group_name = "cpu"
  node_role_arn   = aws_iam_role.node.arn
  subnet_ids      = aws_subnet.private[*].id
  ami_type        = "AL2023_x86_64_STANDARD"
  capacity_type   = "ON_DEMAND"
  instance_types  = var.cpu_instance_types
  disk_size       = var.cpu_disk_size

  scaling_config {
    min_size     = var.cpu_min_size
    desired_size = var.cpu_desired_size
    max_size     = var.cpu_max_size
  }

  update_config {
    max_unavailable = 1
  }

  labels = {
    "proofjobs.io/pool" = "cpu"
  }

  # cluster-autoscaler owns the node count once the group exists.
  lifecycle {
    ignore_changes = [scaling_config[0].desired_size]
  }

  depends_on = [aws_iam_role_policy_attachment.node, aws_eks_addon.vpc_cni, aws_eks_addon.pod_identity_agent]
}

resource "aws_eks_node_group" "gpu" {
  cluster_name    = aws_eks_cluster.this.name
  node_group_name = "gpu"
  node_role_arn   = aws_iam_role.node.arn
  subnet_ids      = aws_subnet.private[*].id
  ami_type        = "AL2023_x86_64_NVIDIA"
  capacity_type   = var.gpu_capacity_type
  instance_types  = var.gpu_instance_types
  disk_size       = var.gpu_disk_size

  scaling_config {
    min_size     = 0
    desired_size = 0
    max_size     = var.gpu_max_size
  }

  update_config {
    max_unavailable = 1
  }

  labels = {
    "proofjobs.io/pool" = "gpu"
    # Tells cluster-autoscaler a new node's GPUs are still being advertised by the device
    # plugin, so it does not scale up again while they appear.
    "k8s.amazonaws.com/accelerator" = "nvidia"
  }

  taint {
    key    = "nvidia.com/gpu"
    value  = "true"
    effect = "NO_SCHEDULE"
  }

  lifecycle {
    ignore_changes = [scaling_config[0].desired_size]
  }

  depends_on = [aws_iam_role_policy_attachment.node, aws_eks_addon.vpc_cni, aws_eks_addon.pod_identity_agent]
}

locals {
  gpu_asg_name = aws_eks_node_group.gpu.resources[0].autoscaling_groups[0].name

  # What cluster-autoscaler needs to scale the gpu group from 0: auto-discovery (EKS also sets
  # these two on managed groups; repeated here so the discovery does not hinge on it) and the
  # labels, taint and GPU count a node of this group will have.
  gpu_asg_tags = {
    "k8s.io/cluster-autoscaler/enabled"                                           = "true"
    "k8s.io/cluster-autoscaler/${var.cluster_name}"                               = "owned"
    "k8s.io/cluster-autoscaler/node-template/label/proofjobs.io/pool"             = "gpu"
    "k8s.io/cluster-autoscaler/node-template/label/k8s.amazonaws.com/accelerator" = "nvidia"
    "k8s.io/cluster-autoscaler/node-template/taint/nvidia.com/gpu"                = "true:NoSchedule"
    "k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu"            = tostring(var.gpus_per_node)
  }
}

resource "aws_autoscaling_group_tag" "gpu" {
  for_each = local.gpu_asg_tags

  autoscaling_group_name = local.gpu_asg_name

  tag {
    key                 = each.key
    value               = each.value
    propagate_at_launch = false
  }
}
