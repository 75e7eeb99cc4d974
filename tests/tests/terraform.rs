//! The AWS deployment in `terraform/` keeps its scale-to-zero and safety invariants. Nothing
//! here can reach the terraform registry, so instead of `terraform validate/plan` every
//! `terraform/*.tf` file is parsed (hcl-rs) and the parsed configuration is checked by
//! structure: blocks by type and labels, attributes by key, `var.x` resolved to its default in
//! variables.tf and `local.x` to its definition. Plus `terraform fmt -check`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use hcl::{
    expr::{Conditional, FuncCall, TemplateExpr, TraversalOperator},
    Block, Body, Expression, ObjectKey,
};

fn terraform_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../terraform")
}

/// Every `terraform/*.tf` file, parsed.
struct Config {
    files: BTreeMap<String, Body>,
}

impl Config {
    fn load() -> Config {
        let dir = terraform_dir();
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "tf") {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {name}: {e}"));
                assert!(text.trim_start().starts_with('#'), "{name} must open with a comment saying why it exists");
                let body = hcl::parse(&text).unwrap_or_else(|e| panic!("terraform/{name} does not parse as HCL: {e}"));
                files.insert(name, body);
            }
        }
        Config { files }
    }

    /// Top-level blocks of one type (`resource`, `data`, `variable`, ...) from every file.
    fn blocks<'a>(&'a self, ident: &'a str) -> impl Iterator<Item = &'a Block> + 'a {
        self.files.values().flat_map(move |body| body.blocks().filter(move |b| b.identifier() == ident))
    }

    /// `resource "<ty>" "<name>"` blocks of one type, by name.
    fn resources(&self, ty: &str) -> BTreeMap<String, &Block> {
        self.labelled("resource", ty)
    }

    fn labelled<'a>(&'a self, ident: &'a str, ty: &str) -> BTreeMap<String, &'a Block> {
        self.blocks(ident)
            .filter(|b| b.labels().first().map(|l| l.as_str()) == Some(ty))
            .map(|b| (b.labels().get(1).map(|l| l.as_str().to_string()).unwrap_or_default(), b))
            .collect()
    }

    fn resource(&self, ty: &str, name: &str) -> &Block {
        self.resources(ty).get(name).copied().unwrap_or_else(|| panic!("missing resource \"{ty}\" \"{name}\""))
    }

    fn data(&self, ty: &str, name: &str) -> &Block {
        self.labelled("data", ty).get(name).copied().unwrap_or_else(|| panic!("missing data \"{ty}\" \"{name}\""))
    }

    fn variable(&self, name: &str) -> Option<&Block> {
        self.blocks("variable").find(|b| b.labels().first().map(|l| l.as_str()) == Some(name))
    }

    /// The default of a string variable.
    fn var_str(&self, name: &str) -> String {
        let default = self.variable(name).and_then(|v| attr(v.body(), "default"));
        default.and_then(|d| self.resolve_str(d)).unwrap_or_else(|| panic!("var.{name} has no string default"))
    }

    fn local(&self, name: &str) -> Option<&Expression> {
        self.blocks("locals").find_map(|b| attr(b.body(), name))
    }

    /// An expression with `var.x` replaced by x's default, `local.x` by its definition,
    /// parentheses dropped and `tostring(..)` applied, as far as that gives a value.
    fn resolve(&self, expr: &Expression) -> Expression {
        match expr {
            Expression::Parenthesis(inner) => self.resolve(inner),
            Expression::FuncCall(call) if func_name(call) == "tostring" && call.args.len() == 1 => match self.resolve(&call.args[0]) {
                Expression::Number(n) => Expression::String(n.to_string()),
                Expression::Bool(b) => Expression::String(b.to_string()),
                other => other,
            },
            _ => match reference(expr).as_deref().and_then(|r| r.split_once('.')) {
                Some(("var", name)) if !name.contains(['.', '[']) => {
                    let var = self.variable(name).unwrap_or_else(|| panic!("var.{name} is used but not declared"));
                    let default = attr(var.body(), "default").unwrap_or_else(|| panic!("var.{name} has no default"));
                    self.resolve(default)
                }
                Some(("local", name)) if !name.contains(['.', '[']) => {
                    self.resolve(self.local(name).unwrap_or_else(|| panic!("local.{name} is used but not defined")))
                }
                _ => expr.clone(),
            },
        }
    }

    fn resolve_str(&self, expr: &Expression) -> Option<String> {
        match self.resolve(expr) {
            Expression::String(s) => Some(s),
            // "..${var.x}.." with every interpolation a variable that has a default.
            Expression::TemplateExpr(t) => {
                let TemplateExpr::QuotedString(raw) = *t else { return None };
                let mut out = String::new();
                let mut rest = raw.as_str();
                while let Some(start) = rest.find("${") {
                    let end = start + rest[start..].find('}')?;
                    let inner = hcl::parse(&format!("x = {}", &rest[start + 2..end])).ok()?;
                    out.push_str(&rest[..start]);
                    out.push_str(&self.resolve_str(attr(&inner, "x")?)?);
                    rest = &rest[end + 1..];
                }
                out.push_str(rest);
                Some(out)
            }
            _ => None,
        }
    }

    fn resolve_u64(&self, expr: &Expression) -> Option<u64> {
        match self.resolve(expr) {
            Expression::Number(n) => n.as_u64(),
            Expression::String(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// The statements of the `aws_iam_policy_document` a `data.aws_iam_policy_document.<n>.json`
    /// reference points at.
    fn policy_statements(&self, expr: &Expression) -> Vec<&Block> {
        let r = reference(expr).unwrap_or_else(|| panic!("policy `{expr}` is not a reference to an aws_iam_policy_document"));
        let name = r
            .strip_prefix("data.aws_iam_policy_document.")
            .and_then(|r| r.strip_suffix(".json"))
            .unwrap_or_else(|| panic!("policy `{r}` is not data.aws_iam_policy_document.<name>.json"));
        child_blocks(self.data("aws_iam_policy_document", name).body(), "statement")
    }

    fn strings(&self, expr: &Expression) -> Vec<String> {
        match self.resolve(expr) {
            Expression::Array(items) => items.iter().map(|e| self.resolve_str(e).unwrap_or_else(|| e.to_string())).collect(),
            other => vec![self.resolve_str(&other).unwrap_or_else(|| other.to_string())],
        }
    }
}

fn attr<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes().find(|a| a.key() == key).map(|a| a.expr())
}

fn child_blocks<'a>(body: &'a Body, ident: &str) -> Vec<&'a Block> {
    body.blocks().filter(|b| b.identifier() == ident).collect()
}

fn child_block<'a>(body: &'a Body, ident: &str, what: &str) -> &'a Block {
    child_blocks(body, ident).into_iter().next().unwrap_or_else(|| panic!("{what} has no `{ident}` block"))
}

fn func_name(call: &FuncCall) -> &str {
    call.name.name.as_str()
}

/// `a.b[0].c` for a variable or traversal expression (e.g. `aws_s3_bucket.artifacts.arn`).
fn reference(expr: &Expression) -> Option<String> {
    match expr {
        Expression::Variable(v) => Some(v.as_str().to_string()),
        Expression::Traversal(t) => {
            let mut out = reference(&t.expr)?;
            for op in &t.operators {
                match op {
                    TraversalOperator::GetAttr(id) => out.push_str(&format!(".{}", id.as_str())),
                    TraversalOperator::Index(Expression::Number(n)) => out.push_str(&format!("[{n}]")),
                    TraversalOperator::Index(e) => out.push_str(&format!("[{}]", reference(e).unwrap_or_else(|| e.to_string()))),
                    TraversalOperator::LegacyIndex(n) => out.push_str(&format!("[{n}]")),
                    TraversalOperator::AttrSplat => out.push_str(".*"),
                    TraversalOperator::FullSplat => out.push_str("[*]"),
                }
            }
            Some(out)
        }
        _ => None,
    }
}

/// The object of an object expression, or of `yamlencode({..})` / `jsonencode({..})`.
fn object(expr: &Expression) -> Option<&hcl::Object<ObjectKey, Expression>> {
    match expr {
        Expression::Object(o) => Some(o),
        Expression::FuncCall(call) if call.args.len() == 1 => object(&call.args[0]),
        _ => None,
    }
}

/// An object key as an expression (`{ a = 1 }` and `{ "a" = 1 }` both give the string "a").
fn key_expr(key: &ObjectKey) -> Expression {
    match key {
        ObjectKey::Identifier(id) => Expression::String(id.as_str().to_string()),
        ObjectKey::Expression(e) => e.clone(),
        other => Expression::String(other.to_string()),
    }
}

fn key_str(key: &ObjectKey) -> String {
    match key_expr(key) {
        Expression::String(s) => s,
        e => e.to_string(),
    }
}

fn get<'a>(obj: &'a hcl::Object<ObjectKey, Expression>, key: &str) -> Option<&'a Expression> {
    obj.iter().find(|(k, _)| key_str(k) == key).map(|(_, v)| v)
}

/// Follows `a.b.c` through nested objects.
fn get_path<'a>(obj: &'a hcl::Object<ObjectKey, Expression>, path: &str) -> Option<&'a Expression> {
    let mut parts = path.split('.');
    let mut cur = get(obj, parts.next()?)?;
    for part in parts {
        cur = get(object(cur)?, part)?;
    }
    Some(cur)
}

/// The object in a helm_release's `values = [yamlencode({...})]`.
fn helm_values(release: &Block) -> &hcl::Object<ObjectKey, Expression> {
    let values = match attr(release.body(), "values") {
        Some(Expression::Array(items)) if items.len() == 1 => object(&items[0]),
        _ => None,
    };
    values.unwrap_or_else(|| panic!("helm_release must set `values = [yamlencode({{...}})]`"))
}

fn is_exact_version(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

#[test]
fn every_terraform_file_parses_and_has_its_part() {
    let config = Config::load();
    for name in [
        "versions.tf",
        "variables.tf",
        "vpc.tf",
        "eks.tf",
        "nodegroups.tf",
        "autoscaler.tf",
        "gpu.tf",
        "artifacts.tf",
        "registry.tf",
        "datastores.tf",
        "outputs.tf",
    ] {
        assert!(config.files.contains_key(name), "terraform/{name} is missing");
    }
    let terraform = config.blocks("terraform").next().expect("no `terraform` block (required_version, required_providers)");
    assert!(attr(terraform.body(), "required_version").is_some(), "terraform.required_version is not set");
    let providers = child_block(terraform.body(), "required_providers", "terraform");
    for (name, want) in [("aws", "hashicorp/aws"), ("helm", "hashicorp/helm")] {
        let spec = attr(providers.body(), name).and_then(object).unwrap_or_else(|| panic!("provider {name} is not in required_providers"));
        assert_eq!(get(spec, "source").and_then(|s| config.resolve_str(s)).as_deref(), Some(want), "provider {name}'s source");
        let version = get(spec, "version").and_then(|v| config.resolve_str(v)).unwrap_or_default();
        assert!(version.starts_with("~>") || version.contains('<'), "provider {name} must be pinned to a major version, is `{version}`");
    }
}

#[test]
fn every_variable_has_a_description_and_a_default() {
    let config = Config::load();
    let variables: Vec<&Block> = config.blocks("variable").collect();
    assert!(variables.len() >= 10, "variables.tf declares only {} variables", variables.len());
    for var in variables {
        let name = var.labels()[0].as_str();
        let description = attr(var.body(), "description").and_then(|d| config.resolve_str(d)).unwrap_or_default();
        assert!(!description.trim().is_empty(), "variable {name} has no description");
        assert!(attr(var.body(), "default").is_some(), "variable {name} has no default (the configuration must plan without -var)");
    }
}

#[test]
fn kubernetes_version_is_pinned() {
    let config = Config::load();
    let cluster = config.resources("aws_eks_cluster").into_values().next().expect("no aws_eks_cluster");
    let version = attr(cluster.body(), "version").and_then(|v| config.resolve_str(v)).unwrap_or_default();
    let minor = version.strip_prefix("1.").unwrap_or_default();
    assert!(
        !minor.is_empty() && minor.chars().all(|c| c.is_ascii_digit()),
        "the EKS cluster's Kubernetes version must be pinned to a literal like \"1.34\", is `{version}`"
    );
}

#[test]
fn gpu_node_group_scales_to_zero_on_nvidia_nodes_behind_a_taint() {
    let config = Config::load();
    let gpu = config.resource("aws_eks_node_group", "gpu").body();
    let scaling = child_block(gpu, "scaling_config", "the gpu node group").body();
    let size = |key: &str| attr(scaling, key).and_then(|e| config.resolve_u64(e));
    assert_eq!(size("min_size"), Some(0), "the gpu node group's min_size must be 0 (an idle cluster pays for no GPU)");
    assert_eq!(size("desired_size"), Some(0), "the gpu node group must start with desired_size 0");
    assert!(size("max_size").is_some_and(|m| m >= 1), "the gpu node group's max_size must be at least 1");
    let ami = attr(gpu, "ami_type").and_then(|a| config.resolve_str(a)).unwrap_or_default();
    assert_eq!(ami, "AL2023_x86_64_NVIDIA", "the gpu node group must use the EKS NVIDIA AMI (driver + container toolkit)");

    let labels = attr(gpu, "labels").and_then(object).expect("the gpu node group has no labels");
    assert_eq!(
        get(labels, "proofjobs.io/pool").and_then(|v| config.resolve_str(v)).as_deref(),
        Some("gpu"),
        "the gpu node group must be labelled proofjobs.io/pool=gpu (the GPU stage profiles select it)"
    );
    let taints: Vec<(String, String, String)> = child_blocks(gpu, "taint")
        .iter()
        .map(|t| {
            let s = |k: &str| attr(t.body(), k).and_then(|e| config.resolve_str(e)).unwrap_or_default();
            (s("key"), s("value"), s("effect"))
        })
        .collect();
    assert!(
        taints.contains(&("nvidia.com/gpu".into(), "true".into(), "NO_SCHEDULE".into())),
        "the gpu node group must be tainted nvidia.com/gpu=true:NO_SCHEDULE so only GPU stage pods land there, has {taints:?}"
    );

    let cpu = config.resource("aws_eks_node_group", "cpu").body();
    let cpu_labels = attr(cpu, "labels").and_then(object).expect("the cpu node group has no labels");
    assert_eq!(
        get(cpu_labels, "proofjobs.io/pool").and_then(|v| config.resolve_str(v)).as_deref(),
        Some("cpu"),
        "the cpu node group must be labelled proofjobs.io/pool=cpu"
    );
    let cpu_min = attr(child_block(cpu, "scaling_config", "the cpu node group").body(), "min_size").and_then(|e| config.resolve_u64(e));
    assert!(
        cpu_min.is_some_and(|m| m >= 1),
        "the cpu node group needs min_size >= 1 (api, dispatcher, cluster-autoscaler), is {cpu_min:?}"
    );
    assert!(child_blocks(cpu, "taint").is_empty(), "the cpu node group must not be tainted");
}

#[test]
fn cluster_autoscaler_knows_the_gpu_node_template_of_the_empty_group() {
    let config = Config::load();
    let cluster_name = config.var_str("cluster_name");
    // tag key -> value over every aws_autoscaling_group_tag on the gpu group's ASG.
    let mut tags = BTreeMap::new();
    for (name, res) in config.resources("aws_autoscaling_group_tag") {
        let body = res.body();
        let asg = attr(body, "autoscaling_group_name").map(|e| config.resolve(e)).and_then(|e| reference(&e)).unwrap_or_default();
        if asg != "aws_eks_node_group.gpu.resources[0].autoscaling_groups[0].name" {
            continue;
        }
        let tag = child_block(body, "tag", &format!("aws_autoscaling_group_tag.{name}")).body();
        let (key, value) = (attr(tag, "key").unwrap(), attr(tag, "value").unwrap());
        if reference(key).as_deref() == Some("each.key") && reference(value).as_deref() == Some("each.value") {
            let for_each = attr(body, "for_each").map(|e| config.resolve(e)).unwrap_or(Expression::Null);
            let map = object(&for_each).unwrap_or_else(|| panic!("aws_autoscaling_group_tag.{name}'s for_each is not a map"));
            for (k, v) in map.iter() {
                let k = config.resolve_str(&key_expr(k));
                tags.insert(k.unwrap_or_else(|| panic!("unresolvable tag key in {name}")), v.clone());
            }
        } else {
            tags.insert(config.resolve_str(key).expect("unresolvable tag key"), value.clone());
        }
    }
    let value = |key: &str| tags.get(key).and_then(|v| config.resolve_str(v));
    let prefix = "k8s.io/cluster-autoscaler";
    assert_eq!(
        value(&format!("{prefix}/enabled")).as_deref(),
        Some("true"),
        "the gpu ASG lacks the auto-discovery tag {prefix}/enabled=true"
    );
    assert_eq!(
        value(&format!("{prefix}/{cluster_name}")).as_deref(),
        Some("owned"),
        "the gpu ASG lacks {prefix}/{cluster_name}=owned (auto-discovery, and the autoscaler policy's resize condition)"
    );
    assert_eq!(
        value(&format!("{prefix}/node-template/label/proofjobs.io/pool")).as_deref(),
        Some("gpu"),
        "the gpu ASG lacks node-template/label/proofjobs.io/pool=gpu: cluster-autoscaler cannot scale it from 0 for GPU stage pods"
    );
    assert_eq!(
        value(&format!("{prefix}/node-template/taint/nvidia.com/gpu")).as_deref(),
        Some("true:NoSchedule"),
        "the gpu ASG lacks node-template/taint/nvidia.com/gpu=true:NoSchedule (the node group's taint)"
    );
    let gpus = tags.get(&format!("{prefix}/node-template/resources/nvidia.com/gpu")).and_then(|v| config.resolve_u64(v));
    assert!(
        gpus.is_some_and(|g| g >= 1),
        "the gpu ASG lacks node-template/resources/nvidia.com/gpu >= 1: a node from 0 would not seem to have a GPU, is {gpus:?}"
    );

    // The autoscaler may resize only groups carrying that owned tag.
    let role_policy = config.resource("aws_iam_role_policy", "cluster_autoscaler");
    let statements = config.policy_statements(attr(role_policy.body(), "policy").unwrap());
    let resize = statements
        .iter()
        .find(|s| attr(s.body(), "actions").is_some_and(|a| config.strings(a).contains(&"autoscaling:SetDesiredCapacity".to_string())))
        .expect("the cluster-autoscaler policy does not allow autoscaling:SetDesiredCapacity");
    let condition = child_block(resize.body(), "condition", "the autoscaler's resize statement").body();
    assert_eq!(
        attr(condition, "variable").and_then(|v| config.resolve_str(v)),
        Some(format!("aws:ResourceTag/{prefix}/{cluster_name}")),
        "cluster-autoscaler must only resize ASGs tagged as owned by this cluster"
    );
}

#[test]
fn cluster_autoscaler_and_device_plugin_are_pinned_helm_releases() {
    let config = Config::load();
    let releases = config.resources("helm_release");
    let by_chart = |chart: &str| {
        releases
            .values()
            .find(|r| attr(r.body(), "chart").and_then(|c| config.resolve_str(c)).as_deref() == Some(chart))
            .copied()
            .unwrap_or_else(|| panic!("no helm_release of chart {chart}"))
    };
    for (chart, repository) in [
        ("cluster-autoscaler", "https://kubernetes.github.io/autoscaler"),
        ("nvidia-device-plugin", "https://nvidia.github.io/k8s-device-plugin"),
    ] {
        let release = by_chart(chart).body();
        assert_eq!(
            attr(release, "repository").and_then(|r| config.resolve_str(r)).as_deref(),
            Some(repository),
            "{chart}'s chart repository"
        );
        let version = attr(release, "version").and_then(|v| config.resolve_str(v)).unwrap_or_default();
        assert!(is_exact_version(&version), "the {chart} chart must be pinned to an exact version, is `{version}`");
    }

    let autoscaler = by_chart("cluster-autoscaler");
    let values = helm_values(autoscaler);
    assert!(get_path(values, "autoDiscovery.clusterName").is_some(), "cluster-autoscaler needs autoDiscovery.clusterName");
    assert!(get(values, "awsRegion").is_some(), "cluster-autoscaler needs awsRegion");
    // Its ServiceAccount is the one the Pod Identity association gives the autoscaler role.
    let account = get_path(values, "rbac.serviceAccount.name").and_then(|n| config.resolve_str(n));
    let namespace = attr(autoscaler.body(), "namespace").and_then(|n| config.resolve_str(n));
    let association = config.resource("aws_eks_pod_identity_association", "cluster_autoscaler").body();
    assert_eq!(
        (
            attr(association, "namespace").and_then(|n| config.resolve_str(n)),
            attr(association, "service_account").and_then(|s| config.resolve_str(s))
        ),
        (namespace, account),
        "the cluster-autoscaler Pod Identity association must name the chart's namespace and ServiceAccount"
    );
    assert_eq!(
        attr(association, "role_arn").and_then(reference).as_deref(),
        Some("aws_iam_role.cluster_autoscaler.arn"),
        "the cluster-autoscaler association must use the autoscaler role"
    );

    let plugin = helm_values(by_chart("nvidia-device-plugin"));
    let selector =
        get(plugin, "nodeSelector").and_then(object).and_then(|o| get(o, "proofjobs.io/pool")).and_then(|v| config.resolve_str(v));
    assert_eq!(selector.as_deref(), Some("gpu"), "the device plugin must run on the gpu pool (nodeSelector proofjobs.io/pool=gpu)");
    let tolerates_gpu_taint = match get(plugin, "tolerations") {
        Some(Expression::Array(items)) => items.iter().filter_map(object).any(|t| {
            get(t, "key").and_then(|k| config.resolve_str(k)).as_deref() == Some("nvidia.com/gpu")
                && get(t, "effect").and_then(|e| config.resolve_str(e)).is_none_or(|e| e == "NoSchedule")
        }),
        _ => false,
    };
    assert!(tolerates_gpu_taint, "the device plugin must tolerate the gpu pool's nvidia.com/gpu NoSchedule taint");
}

#[test]
fn artifact_bucket_expires_objects_and_only_api_and_runner_reach_it_the_dispatcher_only_deletes() {
    let config = Config::load();
    // Lifecycle: an enabled rule that expires objects and aborts stale multipart uploads.
    let lifecycle = config.resources("aws_s3_bucket_lifecycle_configuration");
    let rules: Vec<&Block> = lifecycle.values().flat_map(|l| child_blocks(l.body(), "rule")).collect();
    let enabled = |r: &Block| attr(r.body(), "status").and_then(|s| config.resolve_str(s)).as_deref() == Some("Enabled");
    let expiry_days = rules
        .iter()
        .filter(|r| enabled(r))
        .flat_map(|r| child_blocks(r.body(), "expiration"))
        .filter_map(|e| attr(e.body(), "days").and_then(|d| config.resolve_u64(d)))
        .next();
    assert!(expiry_days.is_some_and(|d| d >= 1), "the artifact bucket needs an enabled lifecycle rule expiring objects after N >= 1 days");
    let abort_days = rules
        .iter()
        .filter(|r| enabled(r))
        .flat_map(|r| child_blocks(r.body(), "abort_incomplete_multipart_upload"))
        .filter_map(|a| attr(a.body(), "days_after_initiation").and_then(|d| config.resolve_u64(d)))
        .next();
    assert_eq!(abort_days, Some(1), "the artifact bucket must abort incomplete multipart uploads after 1 day");

    let block = config.resource("aws_s3_bucket_public_access_block", "artifacts").body();
    for key in ["block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets"] {
        assert_eq!(
            attr(block, key).map(|e| config.resolve(e)),
            Some(Expression::Bool(true)),
            "the artifact bucket's public access block must set {key}"
        );
    }
    assert!(
        !config.resources("aws_s3_bucket_server_side_encryption_configuration").is_empty(),
        "the artifact bucket must have server-side encryption configured"
    );

    // Intermediates expire sooner: an enabled rule filtered on their tag.
    let intermediate_days = rules
        .iter()
        .filter(|r| enabled(r))
        .filter(|r| {
            child_blocks(r.body(), "filter").iter().flat_map(|f| child_blocks(f.body(), "tag")).any(|t| {
                attr(t.body(), "key").and_then(|k| config.resolve_str(k)).as_deref() == Some("proofjobs-class")
                    && attr(t.body(), "value").and_then(|v| config.resolve_str(v)).as_deref() == Some("intermediate")
            })
        })
        .flat_map(|r| child_blocks(r.body(), "expiration"))
        .filter_map(|e| attr(e.body(), "days").and_then(|d| config.resolve_u64(d)))
        .next();
    assert_eq!(intermediate_days, Some(1), "objects tagged proofjobs-class=intermediate must expire after 1 day by default");

    // Each bucket role: assumable by EKS Pod Identity only, allowed named S3 actions on this bucket only.
    let role_actions = |role: &str| -> BTreeSet<String> {
        let body = config.resource("aws_iam_role", role).body();
        let trust = config.policy_statements(attr(body, "assume_role_policy").unwrap());
        assert_eq!(trust.len(), 1, "the {role} role's trust policy must have exactly one statement");
        let actions: BTreeSet<String> = config.strings(attr(trust[0].body(), "actions").unwrap()).into_iter().collect();
        assert_eq!(
            actions,
            BTreeSet::from(["sts:AssumeRole".into(), "sts:TagSession".into()]),
            "EKS Pod Identity trust needs exactly these actions"
        );
        let principals = child_block(trust[0].body(), "principals", "the role's trust statement").body();
        assert_eq!(
            config.strings(attr(principals, "identifiers").unwrap()),
            vec!["pods.eks.amazonaws.com".to_string()],
            "the {role} role must be assumable by EKS Pod Identity only"
        );
        let prefix = format!("aws_iam_role.{role}.");
        let of_role = |b: &&Block| attr(b.body(), "role").and_then(reference).is_some_and(|r| r.starts_with(&prefix));
        let policies: Vec<&Block> = config.resources("aws_iam_role_policy").into_values().filter(of_role).collect();
        assert!(!policies.is_empty(), "the {role} role has no policy");
        let attached = config.resources("aws_iam_role_policy_attachment").into_values().filter(of_role).count();
        assert_eq!(attached, 0, "no managed policy may be attached to the {role} role");
        let mut all = BTreeSet::new();
        for statement in policies.iter().flat_map(|p| config.policy_statements(attr(p.body(), "policy").unwrap())) {
            for action in config.strings(attr(statement.body(), "actions").unwrap()) {
                assert!(action.starts_with("s3:") && action != "s3:*", "the {role} role may only use named S3 actions, has {action}");
                all.insert(action);
            }
            for resource in config.strings(attr(statement.body(), "resources").unwrap()) {
                assert!(
                    resource.starts_with("aws_s3_bucket.artifacts.arn") || resource.starts_with("\"${aws_s3_bucket.artifacts.arn}"),
                    "the {role} role's policy must be scoped to the artifact bucket, names {resource}"
                );
            }
        }
        all
    };
    let granted_to = |role: &str| -> BTreeSet<String> {
        let prefix = format!("aws_iam_role.{role}.");
        let mut granted = BTreeSet::new();
        for (name, association) in config.resources("aws_eks_pod_identity_association") {
            let body = association.body();
            if !attr(body, "role_arn").and_then(reference).is_some_and(|r| r.starts_with(&prefix)) {
                continue;
            }
            assert!(attr(body, "for_each").is_none() && attr(body, "count").is_none(), "{name}: name one ServiceAccount per association");
            let namespace = attr(body, "namespace").and_then(|n| config.resolve_str(n));
            assert_eq!(namespace.as_deref(), Some("proofjobs"), "{name} gives the artifact bucket to a namespace other than proofjobs");
            granted.insert(attr(body, "service_account").and_then(|s| config.resolve_str(s)).unwrap_or_default());
        }
        granted
    };
    assert!(role_actions("artifacts").is_superset(&BTreeSet::from(["s3:GetObject".into(), "s3:PutObject".into()])));
    assert_eq!(
        granted_to("artifacts"),
        BTreeSet::from(["proofjobs-api".to_string(), "proofjobs-runner".to_string()]),
        "exactly the proofjobs-api and proofjobs-runner ServiceAccounts may read and write the artifact bucket"
    );
    assert_eq!(
        role_actions("artifacts_sweep"),
        BTreeSet::from(["s3:DeleteObject".to_string()]),
        "the dispatcher's sweep role may only delete objects"
    );
    assert_eq!(granted_to("artifacts_sweep"), BTreeSet::from(["proofjobs-dispatcher".to_string()]), "only the dispatcher sweeps");
}

#[test]
fn managed_datastores_are_optional_and_off_by_default() {
    let config = Config::load();
    let mut checked = 0;
    for block in config.blocks("resource") {
        let (ty, name) = (block.labels()[0].as_str(), block.labels()[1].as_str());
        let flag = if ty.starts_with("aws_db_") || name.contains("postgres") {
            "create_rds"
        } else if ty.starts_with("aws_elasticache_") || name.contains("redis") {
            "create_elasticache"
        } else {
            continue;
        };
        checked += 1;
        let gated = match attr(block.body(), "count") {
            Some(Expression::Conditional(c)) => {
                let Conditional { cond_expr, true_expr, false_expr } = c.as_ref();
                reference(cond_expr).as_deref() == Some(&format!("var.{flag}"))
                    && config.resolve_u64(true_expr) == Some(1)
                    && config.resolve_u64(false_expr) == Some(0)
            }
            _ => false,
        };
        assert!(gated, "{ty}.{name} must be created only when var.{flag} is set: `count = var.{flag} ? 1 : 0`");
        let default = config.variable(flag).and_then(|v| attr(v.body(), "default")).map(|d| config.resolve(d));
        assert_eq!(default, Some(Expression::Bool(false)), "var.{flag} must default to false");
    }
    assert!(checked >= 4, "expected the optional RDS and ElastiCache resources in datastores.tf, found {checked}");

    let db = config.resource("aws_db_instance", "postgres").body();
    assert_eq!(
        attr(db, "manage_master_user_password").map(|e| config.resolve(e)),
        Some(Expression::Bool(true)),
        "the RDS password must be managed by RDS in Secrets Manager (manage_master_user_password = true)"
    );
    assert!(attr(db, "password").is_none(), "no RDS password may be set in terraform (it would land in state)");
    assert_eq!(attr(db, "engine").and_then(|e| config.resolve_str(e)).as_deref(), Some("postgres"), "RDS engine");
    let pg_version = attr(db, "engine_version").and_then(|e| config.resolve_str(e)).unwrap_or_default();
    assert!(pg_version == "16" || pg_version.starts_with("16."), "RDS must be PostgreSQL 16, is `{pg_version}`");

    let params = config.resource("aws_elasticache_parameter_group", "redis").body();
    let policy = child_blocks(params, "parameter").into_iter().find_map(|p| {
        let body = p.body();
        (attr(body, "name").and_then(|n| config.resolve_str(n)).as_deref() == Some("maxmemory-policy"))
            .then(|| attr(body, "value").and_then(|v| config.resolve_str(v)))
            .flatten()
    });
    assert_eq!(policy.as_deref(), Some("noeviction"), "Redis must never evict artifacts: maxmemory-policy noeviction");
    let redis = config.resource("aws_elasticache_replication_group", "redis").body();
    assert_eq!(
        attr(redis, "parameter_group_name").and_then(reference).as_deref(),
        Some("aws_elasticache_parameter_group.redis[0].name"),
        "the Redis replication group must use the noeviction parameter group"
    );
    assert_eq!(
        attr(redis, "transit_encryption_enabled").map(|e| config.resolve(e)),
        Some(Expression::Bool(true)),
        "Redis must encrypt in transit"
    );
}

#[test]
fn terraform_fmt_is_clean() {
    let dir = terraform_dir();
    let output = match Command::new("terraform").args(["fmt", "-check", "-recursive", "-diff"]).arg(&dir).output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIPPED terraform_fmt_is_clean: no `terraform` binary on PATH");
            return;
        }
        Err(e) => panic!("running terraform fmt: {e}"),
    };
    assert!(
        output.status.success(),
        "`terraform fmt -check -recursive -diff terraform` failed ({}): run `terraform fmt -recursive terraform`\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn network_policies_are_enforced_by_the_vpc_cni() {
    let config = Config::load();
    let cni = config
        .resources("aws_eks_addon")
        .into_values()
        .find(|b| attr(b.body(), "addon_name").and_then(|v| config.resolve_str(v)).as_deref() == Some("vpc-cni"))
        .expect("no vpc-cni add-on");
    let values = attr(cni.body(), "configuration_values")
        .expect("the vpc-cni add-on has no configuration_values: the manifests' NetworkPolicies would not be enforced");
    let Expression::FuncCall(call) = values else { panic!("vpc-cni configuration_values must be jsonencode({{...}}), is {values:?}") };
    assert_eq!(func_name(call), "jsonencode", "vpc-cni configuration_values must be jsonencode({{...}})");
    let settings = call.args.first().and_then(object).expect("jsonencode of an object");
    let enabled = get(settings, "enableNetworkPolicy").and_then(|e| config.resolve_str(e));
    assert_eq!(enabled.as_deref(), Some("true"), "the vpc-cni add-on must set enableNetworkPolicy = \"true\"");
}
