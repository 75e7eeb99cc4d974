# cluster-autoscaler: adds a node when a stage pod is unschedulable (for the gpu group from 0,
# using the node-template tags of nodegroups.tf) and removes idle nodes. It finds the node
# groups' Auto Scaling groups by their auto-discovery tags and gets AWS credentials through
# EKS Pod Identity; its policy may only resize groups tagged as owned by this cluster.
# Chart 9.53.0 ships cluster-autoscaler v1.34.2: keep its minor version equal to the cluster's.

data "aws_iam_policy_document" "cluster_autoscaler" {
  statement {
    sid = "Discover"
    actions = [
      "autoscaling:DescribeAutoScalingGroups",
      "autoscaling:DescribeAutoScalingInstances",
      "autoscaling:DescribeLaunchConfigurations",
      "autoscaling:DescribeScalingActivities",
      "ec2:DescribeImages",
      "ec2:DescribeInstanceTypes",
      "ec2:DescribeLaunchTemplateVersions",
      "ec2:GetInstanceTypesFromInstanceRequirements",
      "eks:DescribeNodegroup",
    ]
    resources = ["*"]
  }

  statement {
    sid = "ResizeOwnedGroups"
    actions = [
      "autoscaling:SetDesiredCapacity",
      "autoscaling:TerminateInstanceInAutoScalingGroup",
    ]
    resources = ["*"]

    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/k8s.io/cluster-autoscaler/${var.cluster_name}"
      values   = ["owned"]
    }
  }
}

resource "aws_iam_role" "cluster_autoscaler" {
  name               = "${var.cluster_name}-cluster-autoscaler"
  assume_role_policy = data.aws_iam_policy_document.pod_identity_trust.json
}

resource "aws_iam_role_policy" "cluster_autoscaler" {
  name   = "cluster-autoscaler"
  role   = aws_iam_role.cluster_autoscaler.id
  policy = data.aws_iam_policy_document.cluster_autoscaler.json
}

resource "aws_eks_pod_identity_association" "cluster_autoscaler" {
  cluster_name    = aws_eks_cluster.this.name
  namespace       = "kube-system"
  service_account = "cluster-autoscaler"
  role_arn        = aws_iam_role.cluster_autoscaler.arn

  depends_on = [aws_eks_addon.pod_identity_agent]
}

resource "helm_release" "cluster_autoscaler" {
  name       = "cluster-autoscaler"
  namespace  = "kube-system"
  repository = "https://kubernetes.github.io/autoscaler"
  chart      = "cluster-autoscaler"
  version    = "9.53.0"

  values = [yamlencode({
    cloudProvider    = "aws"
    awsRegion        = var.region
    fullnameOverride = "cluster-autoscaler"
    autoDiscovery = {
      clusterName = aws_eks_cluster.this.name
    }
    rbac = {
      serviceAccount = {
        create = true
        name   = "cluster-autoscaler"
      }
    }
    # Never on a GPU node (it would keep one alive).
    nodeSelector = {
      "proofjobs.io/pool" = "cpu"
    }
    extraArgs = {
      "balance-similar-node-groups" = true
      "skip-nodes-with-system-pods" = false
      "expander"                    = "least-waste"
      # Idle GPU nodes go after 5 minutes (the runners exit when their stages have no work).
      "scale-down-unneeded-time"   = "5m"
      "scale-down-delay-after-add" = "5m"
    }
  })]

  depends_on = [
    aws_eks_access_policy_association.admin,
    aws_eks_pod_identity_association.cluster_autoscaler,
    aws_eks_node_group.cpu,
    aws_autoscaling_group_tag.gpu,
  ]
}
