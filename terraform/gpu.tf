# The NVIDIA device plugin: the EKS AL2023 NVIDIA AMI has the driver and container toolkit but
# not the plugin, and without it a node advertises no `nvidia.com/gpu` and no GPU stage pod can
# schedule. The DaemonSet runs only on the gpu pool (so it starts with each scaled-up node) and
# tolerates the pool's taint. The chart's default node affinity wants Node Feature Discovery
# labels, which this cluster does not run, so it is replaced by the pool label.

resource "helm_release" "nvidia_device_plugin" {
  name       = "nvidia-device-plugin"
  namespace  = "kube-system"
  repository = "https://nvidia.github.io/k8s-device-plugin"
  chart      = "nvidia-device-plugin"
  version    = "0.18.2"

  values = [yamlencode({
    nodeSelector = {
      "proofjobs.io/pool" = "gpu"
    }
    affinity = {
      nodeAffinity = {
        requiredDuringSchedulingIgnoredDuringExecution = {
          nodeSelectorTerms = [{
            matchExpressions = [{
              key      = "proofjobs.io/pool"
              operator = "In"
              values   = ["gpu"]
            }]
          }]
        }
      }
    }
    tolerations = [
      {
        key      = "nvidia.com/gpu"
        operator = "Exists"
        effect   = "NoSchedule"
      },
      {
        key      = "CriticalAddonsOnly"
        operator = "Exists"
      },
    ]
  })]

  depends_on = [aws_eks_access_policy_association.admin]
}
