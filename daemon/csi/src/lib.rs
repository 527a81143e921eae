//! A Kubernetes CSI node plugin: a pod names a repo or prefix in its volume's attributes and
//! gets a read-only mount of it, with no privilege and no hostPath.
//!
//! The plugin serves the CSI spec's Identity and Node services (no controller, no staging) on
//! a Unix socket, for kubelet. `NodePublishVolume` checks the request, pins the URI to the
//! revision it names now (a volume never sees a mix of revisions), warms it if asked, and
//! mounts it at the target path through a [`Mounter`]: in the daemon, a `locus mount` process
//! of its own, which outlives a restart of the daemon (its reads wait for the daemon to come
//! back). What is published is kept in a state file, so a restarted plugin knows its volumes
//! (and mounts again any whose process is gone).

pub mod attrs;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use locus_grpc::csi;
use locus_node::{Node, WarmProgress};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

pub use attrs::Attrs;

/// The driver's name (a CSIDriver object's `metadata.name`).
pub const DRIVER: &str = "csi.locus.dev";

/// Mounts and unmounts volumes.
#[async_trait::async_trait]
pub trait Mounter: Send + Sync + 'static {
    /// Mounts `uri` read-only at the existing folder `target` as `with` says; returns once
    /// the mount answers.
    async fn mount(&self, uri: &str, target: &Path, with: &MountWith) -> Result<(), String>;
    /// Unmounts `target` (nothing to do if it is not mounted).
    async fn unmount(&self, target: &Path) -> Result<(), String>;
    /// Whether a live mount is at `target`.
    fn alive(&self, target: &Path) -> bool;
}

/// The work of one call, run to its end in a task of its own.
type Work = Box<
    dyn FnOnce(
            Arc<Plugin>,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Status>> + Send>>
        + Send,
>;

/// Which files a volume's mount shows, and how it is mounted.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountWith {
    /// Files shown: globs on paths from the volume's root (none: all).
    pub include: Vec<String>,
    /// Files hidden.
    pub exclude: Vec<String>,
    /// The kernel opens and closes files without asking the mount (`locus mount --no-open`).
    #[serde(default)]
    pub no_open: bool,
    /// Every open is answered (`locus mount --open`). Neither: the mount settles it by the
    /// first files opened.
    #[serde(default)]
    pub open: bool,
}

/// A published volume, as the state file keeps it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Published {
    /// The CO's volume id.
    pub volume_id: String,
    /// The user's attributes as given.
    pub given: BTreeMap<String, String>,
    /// What is mounted: the URI at the revision it resolved to when published.
    pub pinned: String,
    /// How (the state files of earlier versions hold `include` and `exclude` at this level).
    #[serde(flatten)]
    pub mount: MountWith,
}

/// The node plugin.
pub struct Plugin {
    /// Itself, for the tasks a call hands its work to.
    me: std::sync::Weak<Plugin>,
    node: Arc<Node>,
    node_id: String,
    version: String,
    mounter: Arc<dyn Mounter>,
    state_file: PathBuf,
    /// Target path → volume (held for moments only).
    volumes: std::sync::Mutex<BTreeMap<String, Published>>,
    /// Target path → the lock of the one call working on it: another call for the same
    /// target is ABORTED (kubelet asks again), calls for other targets go on.
    busy: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Plugin {
    /// A plugin for `node`, known to the cluster as `node_id`, keeping its state in
    /// `state_file`. Volumes published before a restart are read back; any whose mount is
    /// gone (its process ended) is mounted again.
    pub async fn start(
        node: Arc<Node>,
        node_id: String,
        version: &str,
        mounter: Arc<dyn Mounter>,
        state_file: PathBuf,
    ) -> Result<Arc<Plugin>, String> {
        let volumes: BTreeMap<String, Published> = match std::fs::read(&state_file) {
            Ok(b) => match serde_json::from_slice(&b) {
                Ok(v) => v,
                Err(e) => {
                    // A damaged state file costs the plugin its memory of volumes (kubelet
                    // publishes them again), never the daemon's start.
                    let aside = state_file.with_extension("damaged");
                    tracing::error!(file = %state_file.display(), error = %e, aside = %aside.display(), "the CSI state file cannot be read; set aside");
                    let _ = std::fs::rename(&state_file, &aside);
                    BTreeMap::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("{}: {e}", state_file.display())),
        };
        for (target, v) in &volumes {
            let t = Path::new(target);
            if mounter.alive(t) {
                tracing::info!(target, uri = v.pinned, "published volume still mounted");
                continue;
            }
            let _ = mounter.unmount(t).await;
            // A state file from before auto mounts holds `noOpen: "false"` without `open`.
            let mut with = v.mount.clone();
            with.open |= v.given.get("noOpen").map(String::as_str) == Some("false");
            match mounter.mount(&v.pinned, t, &with).await {
                Ok(()) => tracing::info!(target, uri = v.pinned, "published volume mounted again"),
                Err(e) => {
                    tracing::error!(target, uri = v.pinned, error = %e, "could not mount a published volume again")
                }
            }
        }
        Ok(Arc::new_cyclic(|me| Plugin {
            me: me.clone(),
            node,
            node_id,
            version: version.to_string(),
            mounter,
            state_file,
            volumes: std::sync::Mutex::new(volumes),
            busy: Default::default(),
        }))
    }

    /// The targets published now.
    pub fn published(&self) -> BTreeMap<String, Published> {
        self.volumes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records (or forgets) `target`'s volume and writes the state file: a new file, synced,
    /// renamed over the old, the folder synced.
    fn record(&self, target: &str, v: Option<Published>) -> Result<(), Status> {
        let mut volumes = self.volumes.lock().unwrap_or_else(|p| p.into_inner());
        match v {
            Some(v) => volumes.insert(target.to_string(), v),
            None => volumes.remove(target),
        };
        let bytes =
            serde_json::to_vec_pretty(&*volumes).map_err(|e| Status::internal(e.to_string()))?;
        let tmp = self.state_file.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.state_file)?;
            if let Some(dir) = self.state_file.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| Status::internal(format!("{}: {e}", self.state_file.display())))
    }

    /// The lock of the one call that may work on `target` now; `ABORTED` if another holds it.
    fn claim(&self, target: &str) -> Result<tokio::sync::OwnedMutexGuard<()>, Status> {
        let lock = self
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(target.to_string())
            .or_default()
            .clone();
        lock.try_lock_owned().map_err(|_| {
            Status::aborted(format!(
                "an operation on {target} is in progress; ask again"
            ))
        })
    }

    /// Runs `work` to its end in a task of its own, holding `target`'s lock: a call that
    /// kubelet's deadline cuts short still leaves the volume mounted and recorded (or not
    /// at all), and the next call finds it so.
    async fn run(&self, target: &str, work: Work) -> Result<(), Status> {
        let guard = self.claim(target)?;
        let me = self
            .me
            .upgrade()
            .ok_or_else(|| Status::unavailable("stopping"))?;
        tokio::spawn(async move {
            let r = work(me).await;
            drop(guard);
            r
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
    }

    async fn publish(
        self: Arc<Self>,
        r: csi::NodePublishVolumeRequest,
        attrs: Attrs,
    ) -> Result<(), Status> {
        let target = PathBuf::from(&r.target_path);
        let known = self
            .volumes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&r.target_path)
            .cloned();
        let pinned = match &known {
            Some(v) if v.volume_id != r.volume_id || v.given != attrs.given => {
                return Err(Status::already_exists(format!(
                    "{} is published there with other attributes",
                    r.target_path
                )))
            }
            Some(_) if self.mounter.alive(&target) => return Ok(()),
            // Its mount is gone: mounted again, at the revision it was pinned to.
            Some(v) => v.pinned.clone(),
            None => self.pin(&attrs).await?,
        };
        if attrs.warm {
            self.warm(&pinned, &attrs).await?;
        }
        // A mount left there (dead, or from a call cut short) goes first.
        self.mounter
            .unmount(&target)
            .await
            .map_err(|e| Status::internal(format!("unmounting {}: {e}", target.display())))?;
        std::fs::create_dir_all(&target)
            .map_err(|e| Status::internal(format!("{}: {e}", target.display())))?;
        self.mounter
            .mount(&pinned, &target, &attrs.mount)
            .await
            .map_err(|e| {
                Status::internal(format!("mounting {pinned} at {}: {e}", target.display()))
            })?;
        self.record(
            &r.target_path,
            Some(Published {
                volume_id: r.volume_id,
                given: attrs.given,
                pinned,
                mount: attrs.mount,
            }),
        )
    }

    async fn unpublish(self: Arc<Self>, target_path: String) -> Result<(), Status> {
        let target = PathBuf::from(&target_path);
        // Idempotent: a locus mount there goes, then the folder we made; a target never
        // published, or already unpublished, is fine.
        self.mounter
            .unmount(&target)
            .await
            .map_err(|e| Status::internal(format!("unmounting {}: {e}", target.display())))?;
        match std::fs::remove_dir(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Status::internal(format!("{}: {e}", target.display()))),
        }
        let known = self
            .volumes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&target_path);
        match known {
            true => self.record(&target_path, None),
            false => Ok(()),
        }
    }

    /// Fills the node's cache with the volume's files (its globs see paths from the volume's
    /// root, as the mount's do), for up to `attrs.warm_timeout`; past it the warm goes on in
    /// the background and the volume is mounted anyway.
    async fn warm(&self, pinned: &str, attrs: &Attrs) -> Result<(), Status> {
        let uri =
            locus_core::LocusUri::parse(pinned).map_err(|e| Status::internal(e.to_string()))?;
        let selection =
            locus_core::select::Selection::new(&attrs.mount.include, &attrs.mount.exclude)
                .map_err(|e| Status::invalid_argument(format!("bad glob {e}")))?;
        let node = self.node.clone();
        let warm = tokio::spawn(async move {
            let r = node.resolve(&uri).await?;
            let prefix = match uri.path.is_empty() {
                true => String::new(),
                false => format!("{}/", uri.path),
            };
            let mut files = locus_core::ListingBuilder::default();
            for f in r.files.iter() {
                let rel = f.path.strip_prefix(&prefix).unwrap_or(&f.path);
                if selection.keep(rel) {
                    files.push(&f);
                }
            }
            node.warm(&files.finish(), false, Arc::new(WarmProgress::default()))
                .await
        });
        match tokio::time::timeout(attrs.warm_timeout, warm).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(Status::unavailable(format!("warming {pinned}: {e}"))),
            Ok(Err(e)) => Err(Status::internal(e.to_string())),
            Err(_) => {
                tracing::warn!(
                    uri = pinned,
                    "the warm outlasted warmTimeout; mounting anyway"
                );
                Ok(())
            }
        }
    }

    /// Serves Identity and Node on `listener` (the daemon binds the socket: 0660, in
    /// kubelet's plugins folder) until `stop` resolves.
    pub fn serve(
        self: Arc<Self>,
        listener: tokio::net::UnixListener,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let server = tonic::transport::Server::builder()
            .add_service(csi::identity_server::IdentityServer::from_arc(self.clone()))
            .add_service(csi::node_server::NodeServer::from_arc(self))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                stop,
            );
        tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "the CSI socket stopped");
            }
        })
    }

    /// Resolves `a`'s revision now: the URI every read of the volume goes to.
    async fn pin(&self, a: &Attrs) -> Result<String, Status> {
        let r = self.node.resolve(&a.uri).await.map_err(|e| match &e {
            locus_node::NodeError::NotFound(_)
            | locus_node::NodeError::Origin(locus_origin::OriginError::NotFound { .. }) => {
                Status::not_found(e.to_string())
            }
            locus_node::NodeError::Uri(_) => Status::invalid_argument(e.to_string()),
            _ => Status::unavailable(e.to_string()),
        })?;
        Ok(a.uri.at_revision(&r.revision).to_string())
    }
}

#[tonic::async_trait]
impl csi::identity_server::Identity for Plugin {
    async fn get_plugin_info(
        &self,
        _: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: DRIVER.into(),
            vendor_version: self.version.clone(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        // A node plugin only: no controller service, no topology.
        Ok(Response::new(csi::GetPluginCapabilitiesResponse {
            capabilities: vec![],
        }))
    }

    async fn probe(
        &self,
        _: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        Ok(Response::new(csi::ProbeResponse { ready: Some(true) }))
    }
}

fn required(v: &str, what: &str) -> Result<(), Status> {
    match v.is_empty() {
        true => Err(Status::invalid_argument(format!("{what} is required"))),
        false => Ok(()),
    }
}

#[tonic::async_trait]
impl csi::node_server::Node for Plugin {
    async fn node_stage_volume(
        &self,
        _: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        Err(Status::unimplemented("locus volumes are not staged"))
    }

    async fn node_unstage_volume(
        &self,
        _: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        Err(Status::unimplemented("locus volumes are not staged"))
    }

    async fn node_publish_volume(
        &self,
        req: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let r = req.into_inner();
        required(&r.volume_id, "volume_id")?;
        required(&r.target_path, "target_path")?;
        let cap = r
            .volume_capability
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
        match &cap.access_type {
            Some(csi::volume_capability::AccessType::Mount(_)) => {}
            Some(csi::volume_capability::AccessType::Block(_)) => {
                return Err(Status::invalid_argument(
                    "block volumes are not supported: a locus volume is a read-only file tree",
                ))
            }
            None => {
                return Err(Status::invalid_argument(
                    "volume_capability has no access type",
                ))
            }
        }
        let target = PathBuf::from(&r.target_path);
        if !target.is_absolute() {
            return Err(Status::invalid_argument("target_path must be absolute"));
        }
        let attrs = Attrs::parse(&r.volume_context).map_err(Status::invalid_argument)?;
        let target = r.target_path.clone();
        self.run(&target, Box::new(move |me| Box::pin(me.publish(r, attrs))))
            .await?;
        Ok(Response::new(csi::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let r = req.into_inner();
        required(&r.volume_id, "volume_id")?;
        required(&r.target_path, "target_path")?;
        let target = r.target_path.clone();
        self.run(
            &target,
            Box::new(move |me| Box::pin(me.unpublish(r.target_path))),
        )
        .await?;
        Ok(Response::new(csi::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        _: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        Err(Status::unimplemented("no volume stats"))
    }

    async fn node_expand_volume(
        &self,
        _: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        Err(Status::unimplemented("locus volumes are read-only"))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(csi::NodeGetCapabilitiesResponse {
            capabilities: vec![],
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}
