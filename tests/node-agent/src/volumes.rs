//! File volumes: `configMap`, `secret` and `projected` (ServiceAccount token, ConfigMap,
//! Secret, downward-API namespace) volumes, written into the pod's directory and bind-mounted at
//! their mountPath in a private mount namespace of the pod's process.
//!
//! Deployments need them: the dispatcher's in-cluster config reads its token and CA from
//! `/var/run/secrets/kubernetes.io/serviceaccount`, and its stage profiles from a mounted
//! ConfigMap, at fixed paths that other pods on the same host must not see. (emptyDir volumes
//! stay env-rebased directories, see pod.rs; hostPath volumes are the host's own paths.)

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use k8s_openapi::api::{
    authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
    core::v1::{ConfigMap, KeyToPath, Pod, Secret, ServiceAccount, Volume},
};
use kube::{
    api::{Api, PostParams},
    Client,
};

use crate::{
    pod::{self, SpecError},
    worker::{config_map_data, secret_data},
};

/// A directory of the agent's, mounted at `target` inside the pod's process.
#[derive(Clone, Debug, PartialEq)]
pub struct FileMount {
    pub source: PathBuf,
    pub target: PathBuf,
}

/// Writes the first container's file volumes under the pod's directory; returns their mounts.
pub async fn materialize(client: &Client, pod: &Pod, work_dir: &Path) -> Result<Vec<FileMount>, SpecError> {
    let Some(container) = pod::first_container(pod) else { return Ok(Vec::new()) };
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let mut mounts = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let Some(volume) = volumes.iter().find(|v| v.name == mount.name) else { continue };
        let files = match files_of(client, pod, &namespace, volume).await? {
            Some(files) => files,
            None => continue,
        };
        let dir = pod::pod_dir(work_dir, pod).join("files").join(&volume.name);
        write_files(&dir, &files).map_err(|e| SpecError::Config(format!("volume {:?}: {e}", volume.name)))?;
        mounts.push(FileMount { source: dir, target: PathBuf::from(&mount.mount_path) });
    }
    Ok(mounts)
}

/// The files of one volume, `None` for volume types that are not file volumes.
async fn files_of(client: &Client, pod: &Pod, namespace: &str, volume: &Volume) -> Result<Option<BTreeMap<String, String>>, SpecError> {
    let mut files = BTreeMap::new();
    if let Some(cm) = &volume.config_map {
        let data = config_map(client, namespace, &cm.name, cm.optional.unwrap_or(false)).await?;
        select(&mut files, data, cm.items.as_deref());
    } else if let Some(secret) = &volume.secret {
        let name = secret.secret_name.clone().unwrap_or_default();
        let data = secret_of(client, namespace, &name, secret.optional.unwrap_or(false)).await?;
        select(&mut files, data, secret.items.as_deref());
    } else if let Some(projected) = &volume.projected {
        for source in projected.sources.iter().flatten() {
            if let Some(token) = &source.service_account_token {
                files.insert(token.path.clone(), service_account_token(client, pod, namespace, token.expiration_seconds).await?);
            }
            if let Some(cm) = &source.config_map {
                let data = config_map(client, namespace, &cm.name, cm.optional.unwrap_or(false)).await?;
                select(&mut files, data, cm.items.as_deref());
            }
            if let Some(secret) = &source.secret {
                let data = secret_of(client, namespace, &secret.name, secret.optional.unwrap_or(false)).await?;
                select(&mut files, data, secret.items.as_deref());
            }
            if let Some(downward) = &source.downward_api {
                for item in downward.items.iter().flatten() {
                    if let Some(field) = &item.field_ref {
                        files.insert(item.path.clone(), pod::field_value(pod, &field.field_path)?);
                    }
                }
            }
        }
    } else {
        return Ok(None);
    }
    Ok(Some(files))
}

/// All keys, or only `items` (key → path) when given, as the kubelet does.
fn select(files: &mut BTreeMap<String, String>, data: BTreeMap<String, String>, items: Option<&[KeyToPath]>) {
    match items {
        Some(items) => {
            for item in items {
                if let Some(value) = data.get(&item.key) {
                    files.insert(item.path.clone(), value.clone());
                }
            }
        }
        None => files.extend(data),
    }
}

fn write_files(dir: &Path, files: &BTreeMap<String, String>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (path, content) in files {
        if path.split('/').any(|part| part == ".." || part.is_empty()) {
            return Err(std::io::Error::other(format!("invalid file path {path:?}")));
        }
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(file, content)?;
    }
    Ok(())
}

async fn config_map(client: &Client, namespace: &str, name: &str, optional: bool) -> Result<BTreeMap<String, String>, SpecError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(Some(cm)) => Ok(config_map_data(cm)),
        Ok(None) if optional => Ok(BTreeMap::new()),
        Ok(None) => Err(SpecError::Config(format!("configmap {name:?} not found"))),
        Err(e) => Err(SpecError::Config(format!("configmap {name:?}: {e}"))),
    }
}

async fn secret_of(client: &Client, namespace: &str, name: &str, optional: bool) -> Result<BTreeMap<String, String>, SpecError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(Some(s)) => Ok(secret_data(s)),
        Ok(None) if optional => Ok(BTreeMap::new()),
        Ok(None) => Err(SpecError::Config(format!("secret {name:?} not found"))),
        Err(e) => Err(SpecError::Config(format!("secret {name:?}: {e}"))),
    }
}

/// A token of the pod's ServiceAccount bound to the pod, as the kubelet requests it.
async fn service_account_token(client: &Client, pod: &Pod, namespace: &str, expiration: Option<i64>) -> Result<String, SpecError> {
    let account = pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into());
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(expiration.unwrap_or(3607).max(600)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let issued: TokenRequest = api
        .create_subresource("token", &account, &PostParams::default(), &request)
        .await
        .map_err(|e| SpecError::Config(format!("token for serviceaccount {account:?}: {e}")))?;
    issued.status.map(|s| s.token).ok_or_else(|| SpecError::Config(format!("no token issued for serviceaccount {account:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_pick_and_rename_keys() {
        let data = BTreeMap::from([("a".to_string(), "1".to_string()), ("b".to_string(), "2".to_string())]);
        let mut files = BTreeMap::new();
        select(&mut files, data.clone(), Some(&[KeyToPath { key: "b".into(), path: "sub/bee".into(), mode: None }]));
        assert_eq!(files, BTreeMap::from([("sub/bee".to_string(), "2".to_string())]));
        let mut all = BTreeMap::new();
        select(&mut all, data, None);
        assert_eq!(all.len(), 2);
    }

    #[test]
    fn file_paths_stay_inside_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write_files(dir.path(), &BTreeMap::from([("../escape".to_string(), "x".to_string())])).is_err());
        write_files(dir.path(), &BTreeMap::from([("ca.crt".to_string(), "pem".to_string())])).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("ca.crt")).unwrap(), "pem");
    }
}
