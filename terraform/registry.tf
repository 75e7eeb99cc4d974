# ECR repositories for the images the cluster runs: scanned on push, encrypted, untagged
# images gone after a day and only the newest var.ecr_keep_images kept (the CUDA runner image
# is large; ECR storage is billed per GB-month). Nodes pull with the node role's read-only policy.

locals {
  ecr_repositories = toset([
    "proofjobs/api",
    "proofjobs/dispatcher",
    "proofjobs/proofctl",
    "proofjobs/task-runner",
    "proofjobs/task-runner-cuda",
  ])
}

resource "aws_ecr_repository" "this" {
  for_each = local.ecr_repositories

  name                 = each.value
  image_tag_mutability = var.ecr_immutable_tags ? "IMMUTABLE" : "MUTABLE"

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "AES256"
  }
}

resource "aws_ecr_lifecycle_policy" "this" {
  for_each = aws_ecr_repository.this

  repository = each.value.name
  policy = jsonencode({
    rules = [
      {
        rulePriority = 1
        description  = "Expire untagged images after a day"
        selection = {
          tagStatus   = "untagged"
          countType   = "sinceImagePushed"
          countUnit   = "days"
          countNumber = 1
        }
        action = { type = "expire" }
      },
      {
        rulePriority = 2
        description  = "Keep the newest ${var.ecr_keep_images} images"
        selection = {
          tagStatus   = "any"
          countType   = "imageCountMoreThan"
          countNumber = var.ecr_keep_images
        }
        action = { type = "expire" }
      },
    ]
  })
}
