# The artifact spill bucket: private (public access blocked, bucket-owner objects, TLS only),
# encrypted at rest, objects expired after var.artifact_retention_days and failed multipart
# uploads cleaned up after a day, intermediates (objects tagged proofjobs-class=intermediate)
# after var.intermediate_retention_days. The api and runner ServiceAccounts of the proofjobs
# namespace get a role to read and write it (EKS Pod Identity); the dispatcher, which sweeps what
# ended proofs leave, gets one that may only delete; everything else gets none.

resource "aws_s3_bucket" "artifacts" {
  bucket_prefix = "${var.cluster_name}-artifacts-"
}

resource "aws_s3_bucket_public_access_block" "artifacts" {
  bucket                  = aws_s3_bucket.artifacts.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id

  rule {
    id     = "expire-artifacts"
    status = "Enabled"

    filter {}

    expiration {
      days = var.artifact_retention_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }

  # A backstop only: the dispatcher deletes a proof's intermediates when it ends, and Redis expires
  # their pointers sooner; objects whose pointer expired are gone from the bucket within this.
  rule {
    id     = "expire-intermediates"
    status = "Enabled"

    filter {
      tag {
        key   = "proofjobs-class"
        value = "intermediate"
      }
    }

    expiration {
      days = var.intermediate_retention_days
    }
  }
}

data "aws_iam_policy_document" "artifacts_bucket" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.artifacts.arn, "${aws_s3_bucket.artifacts.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  policy = data.aws_iam_policy_document.artifacts_bucket.json

  depends_on = [aws_s3_bucket_public_access_block.artifacts]
}

# What the api and runners may do: objects in this bucket, nothing else.
data "aws_iam_policy_document" "artifacts_access" {
  statement {
    sid       = "ListBucket"
    actions   = ["s3:ListBucket", "s3:ListBucketMultipartUploads"]
    resources = [aws_s3_bucket.artifacts.arn]
  }

  statement {
    sid = "Objects"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = ["${aws_s3_bucket.artifacts.arn}/*"]
  }
}

resource "aws_iam_role" "artifacts" {
  name               = "${var.cluster_name}-artifacts"
  assume_role_policy = data.aws_iam_policy_document.pod_identity_trust.json
}

resource "aws_iam_role_policy" "artifacts" {
  name   = "artifacts-bucket"
  role   = aws_iam_role.artifacts.id
  policy = data.aws_iam_policy_document.artifacts_access.json
}

resource "aws_eks_pod_identity_association" "artifacts_api" {
  cluster_name    = aws_eks_cluster.this.name
  namespace       = var.namespace
  service_account = var.api_service_account
  role_arn        = aws_iam_role.artifacts.arn

  depends_on = [aws_eks_addon.pod_identity_agent]
}

resource "aws_eks_pod_identity_association" "artifacts_runner" {
  cluster_name    = aws_eks_cluster.this.name
  namespace       = var.namespace
  service_account = var.runner_service_account
  role_arn        = aws_iam_role.artifacts.arn

  depends_on = [aws_eks_addon.pod_identity_agent]
}

# The dispatcher's sweep: delete objects of this bucket, nothing else.
data "aws_iam_policy_document" "artifacts_sweep" {
  statement {
    sid       = "DeleteObjects"
    actions   = ["s3:DeleteObject"]
    resources = ["${aws_s3_bucket.artifacts.arn}/*"]
  }
}

resource "aws_iam_role" "artifacts_sweep" {
  name               = "${var.cluster_name}-artifacts-sweep"
  assume_role_policy = data.aws_iam_policy_document.pod_identity_trust.json
}

resource "aws_iam_role_policy" "artifacts_sweep" {
  name   = "artifacts-bucket-delete"
  role   = aws_iam_role.artifacts_sweep.id
  policy = data.aws_iam_policy_document.artifacts_sweep.json
}

resource "aws_eks_pod_identity_association" "artifacts_dispatcher" {
  cluster_name    = aws_eks_cluster.this.name
  namespace       = var.namespace
  service_account = var.dispatcher_service_account
  role_arn        = aws_iam_role.artifacts_sweep.arn

  depends_on = [aws_eks_addon.pod_identity_agent]
}
