# Provider configuration: AWS in var.region with common tags, and helm talking to the EKS
# cluster created here (token from `aws eks get-token`, so the aws CLI must be on PATH and the
# caller must be one of the cluster admins from eks.tf).

provider "aws" {
  region = var.region

  default_tags {
    tags = merge({ "proofjobs.io/cluster" = var.cluster_name, "managed-by" = "terraform" }, var.tags)
  }
}

provider "helm" {
  kubernetes {
    host                   = aws_eks_cluster.this.endpoint
    cluster_ca_certificate = base64decode(aws_eks_cluster.this.certificate_authority[0].data)

    exec {
      api_version = "client.authentication.k8s.io/v1beta1"
      command     = "aws"
      args        = ["eks", "get-token", "--cluster-name", aws_eks_cluster.this.name, "--region", var.region]
    }
  }
}

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}
