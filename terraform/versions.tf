# Pins terraform and every provider this configuration uses, so `terraform init` on another
# machine resolves the same major versions the configuration was written against.
# - hashicorp/aws 5.x: EKS access entries (>= 5.33) and EKS Pod Identity associations (>= 5.31).
# - hashicorp/helm 2.x: the `kubernetes { ... }` provider block syntax below (3.x changed it).
# No community modules: every resource is a plain aws_*/helm_* resource.

terraform {
  required_version = ">= 1.6.0, < 2.0.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.80"
    }
    helm = {
      source  = "hashicorp/helm"
      version = "~> 2.17"
    }
  }
}
