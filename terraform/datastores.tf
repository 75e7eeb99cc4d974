# Optional managed datastores, both off by default (run PostgreSQL/Redis yourself or in the
# cluster instead). Both live in the private subnets and accept connections only from the EKS
# cluster security group, which managed node groups (and so every pod) use.
# - RDS PostgreSQL 16: the master password is generated and kept in Secrets Manager by RDS
#   (manage_master_user_password), so it is never in terraform state or outputs; PostgreSQL 16
#   on RDS requires TLS by default (sslmode=require in the database URL).
# - ElastiCache Redis: TLS in transit (rediss:// URLs) and `maxmemory-policy noeviction`, so a
#   full Redis refuses writes instead of silently evicting artifacts proofs still need.

locals {
  node_security_group_id = aws_eks_cluster.this.vpc_config[0].cluster_security_group_id
}

resource "aws_db_subnet_group" "postgres" {
  count = var.create_rds ? 1 : 0

  name       = "${var.cluster_name}-postgres"
  subnet_ids = aws_subnet.private[*].id
}

resource "aws_security_group" "postgres" {
  count = var.create_rds ? 1 : 0

  name        = "${var.cluster_name}-postgres"
  description = "PostgreSQL from the EKS nodes only"
  vpc_id      = aws_vpc.this.id
}

resource "aws_vpc_security_group_ingress_rule" "postgres_from_nodes" {
  count = var.create_rds ? 1 : 0

  security_group_id            = aws_security_group.postgres[0].id
  referenced_security_group_id = local.node_security_group_id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
}

resource "aws_db_instance" "postgres" {
  count = var.create_rds ? 1 : 0

  identifier                  = "${var.cluster_name}-postgres"
  engine                      = "postgres"
  engine_version              = "16"
  instance_class              = var.rds_instance_class
  allocated_storage           = 20
  max_allocated_storage       = 200
  storage_type                = "gp3"
  storage_encrypted           = true
  db_name                     = "proofjobs"
  username                    = "proofjobs"
  manage_master_user_password = true
  db_subnet_group_name        = aws_db_subnet_group.postgres[0].name
  vpc_security_group_ids      = [aws_security_group.postgres[0].id]
  publicly_accessible         = false
  backup_retention_period     = 7
  auto_minor_version_upgrade  = true
  deletion_protection         = var.rds_deletion_protection
  skip_final_snapshot         = false
  final_snapshot_identifier   = "${var.cluster_name}-postgres-final"
}

resource "aws_elasticache_subnet_group" "redis" {
  count = var.create_elasticache ? 1 : 0

  name       = "${var.cluster_name}-redis"
  subnet_ids = aws_subnet.private[*].id
}

resource "aws_security_group" "redis" {
  count = var.create_elasticache ? 1 : 0

  name        = "${var.cluster_name}-redis"
  description = "Redis from the EKS nodes only"
  vpc_id      = aws_vpc.this.id
}

resource "aws_vpc_security_group_ingress_rule" "redis_from_nodes" {
  count = var.create_elasticache ? 1 : 0

  security_group_id            = aws_security_group.redis[0].id
  referenced_security_group_id = local.node_security_group_id
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
}

resource "aws_elasticache_parameter_group" "redis" {
  count = var.create_elasticache ? 1 : 0

  name   = "${var.cluster_name}-redis7-noeviction"
  family = "redis7"

  parameter {
    name  = "maxmemory-policy"
    value = "noeviction"
  }
}

resource "aws_elasticache_replication_group" "redis" {
  count = var.create_elasticache ? 1 : 0

  replication_group_id       = "${var.cluster_name}-redis"
  description                = "proofjobs artifact store and bus"
  engine                     = "redis"
  engine_version             = "7.1"
  node_type                  = var.redis_node_type
  num_cache_clusters         = 1
  port                       = 6379
  parameter_group_name       = aws_elasticache_parameter_group.redis[0].name
  subnet_group_name          = aws_elasticache_subnet_group.redis[0].name
  security_group_ids         = [aws_security_group.redis[0].id]
  at_rest_encryption_enabled = true
  transit_encryption_enabled = true
  automatic_failover_enabled = false
}
