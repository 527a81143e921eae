//! Client subcommands: they talk to the node's daemon over its Unix socket.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use locus_core::{format_size, LocusUri};
use locus_grpc::v1 as pb;

use crate::Failure;

pub type Client = locus_grpc::LocalClient;

#[derive(Args)]
pub struct WarmArgs {
    #[command(flatten)]
    select: SelectArgs,
    /// Keep the files from eviction on this node (with --scope all-nodes, on the others too
    /// where they run with --accept-peer-pins).
    #[arg(long)]
    pin: bool,
    /// node: this node holds a full copy; cluster: the owners hold every chunk; all-nodes: every member holds a full copy.
    #[arg(long, default_value = "node", value_parser = ["node", "cluster", "all-nodes"])]
    scope: String,
    /// Leave the warm to the daemon and return once it has started (its progress shows in
    /// `locus status` and the daemon's log). Without it, Ctrl-C cancels the warm.
    #[arg(long)]
    detach: bool,
}

#[derive(Args)]
pub struct SelectArgs {
    /// Repos, folders or files, e.g. hf://ORG/NAME@REV.
    #[arg(required = true)]
    uris: Vec<String>,
    /// Only files whose path matches (repeatable), e.g. '*.safetensors'.
    #[arg(long)]
    include: Vec<String>,
    /// Skip files whose path matches (repeatable).
    #[arg(long)]
    exclude: Vec<String>,
}

/// `locus unpin` (`evict: false`) or `locus evict`: one line saying what was done.
pub async fn unpin_or_evict(socket: &Path, a: SelectArgs, evict: bool) -> Result<(), Failure> {
    for u in &a.uris {
        check_uri(u)?;
    }
    let mut client = connect(socket).await?;
    let req = pb::SelectRequest {
        uris: a.uris,
        include: a.include,
        exclude: a.exclude,
    };
    let r = match evict {
        true => client.evict(req).await,
        false => client.unpin(req).await,
    }
    .map_err(status_failure)?
    .into_inner();
    let verb = if evict { "evicted" } else { "unpinned" };
    let mut line = format!(
        "{verb} {} files ({})",
        r.files,
        locus_core::format_size(r.bytes)
    );
    if r.not_cached > 0 {
        line.push_str(&format!("; {} not cached here", r.not_cached));
    }
    if r.in_use > 0 {
        line.push_str(&format!("; {} in use, left", r.in_use));
    }
    if r.not_pinned > 0 {
        line.push_str(&format!("; {} were not pinned", r.not_pinned));
    }
    println!("{line}");
    Ok(())
}

fn check_uri(s: &str) -> Result<LocusUri, Failure> {
    LocusUri::parse(s).map_err(|e| Failure::usage(e.to_string()))
}

fn status_failure(s: tonic::Status) -> Failure {
    // Bad usage exits 2: an argument the daemon found wrong (a precondition is not usage).
    let code = match s.code() {
        tonic::Code::InvalidArgument => 2,
        _ => 1,
    };
    Failure::new(code, locus_grpc::Refusal::message(&s))
}

/// Connects to the daemon at `socket`.
pub async fn connect(socket: &Path) -> Result<Client, Failure> {
    locus_grpc::connect_local(socket)
        .await
        .map_err(|e| Failure::new(1, e.0))
}

/// Progress reporting: a bar on a terminal, a line every few seconds otherwise.
struct Reporter {
    bar: Option<ProgressBar>,
    last_line: Instant,
    started: Instant,
    /// The last retry note printed, printed again only when it changes.
    note: String,
}

impl Reporter {
    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(0);
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta}) {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b
        });
        Self {
            bar,
            last_line: Instant::now(),
            started: Instant::now(),
            note: String::new(),
        }
    }

    fn update(&mut self, p: &pb::WarmProgress) {
        if !p.note.is_empty() && p.note != self.note {
            // Each retry once, on its own line: why the bar stands still.
            match &self.bar {
                Some(b) => b.println(&p.note),
                None => eprintln!("warm: {}", p.note),
            }
        }
        self.note.clone_from(&p.note);
        match &self.bar {
            Some(b) => {
                b.set_length(p.total_bytes);
                b.set_position(p.done_bytes);
                b.set_message(format!("{}/{} files", p.done_files, p.total_files));
            }
            None if self.last_line.elapsed() >= Duration::from_secs(5) => {
                self.last_line = Instant::now();
                let secs = self.started.elapsed().as_secs_f64().max(1e-3);
                eprintln!(
                    "warm: {} / {} ({:.0}%), {}/{} files, {}/s",
                    format_size(p.done_bytes),
                    format_size(p.total_bytes),
                    100.0 * p.done_bytes as f64 / p.total_bytes.max(1) as f64,
                    p.done_files,
                    p.total_files,
                    format_size((p.done_bytes as f64 / secs) as u64)
                );
            }
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// The outcome of a warm, for the summary and for the demo.
pub struct WarmSummary {
    pub files: u32,
    pub bytes: u64,
    pub seconds: f64,
    pub origin: u64,
    pub peers: u64,
    pub local: u64,
    /// An all-nodes warm: each member's copy.
    pub nodes: Vec<pb::NodeWarm>,
}

impl std::fmt::Display for WarmSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(one) = self.nodes.first() {
            // Copies on each node, not one sum as if it were one copy.
            writeln!(
                f,
                "warmed {} files ({}) on each of {} nodes in {:.2} s: {} from origin",
                one.total_files,
                format_size(one.total_bytes),
                self.nodes.len(),
                self.seconds,
                format_size(self.origin)
            )?;
            write!(
                f,
                "{:<24} {:>11} {:>12} {:>12} {:>14}",
                "NODE", "FILES", "BYTES", "FROM PEERS", "ALREADY THERE"
            )?;
            for n in &self.nodes {
                let t = n.transfer.unwrap_or_default();
                write!(
                    f,
                    "\n{:<24} {:>11} {:>12} {:>12} {:>14}",
                    n.addr,
                    format!("{}/{}", n.done_files, n.total_files),
                    format_size(n.done_bytes),
                    format_size(t.peer_bytes),
                    format_size(t.local_bytes)
                )?;
            }
            return Ok(());
        }
        write!(
            f,
            "warmed {} files, {} in {:.2} s ({}/s): {} from origin, {} from peers, {} local",
            self.files,
            format_size(self.bytes),
            self.seconds,
            format_size((self.bytes as f64 / self.seconds.max(1e-6)) as u64),
            format_size(self.origin),
            format_size(self.peers),
            format_size(self.local)
        )
    }
}

pub async fn warm_with(
    client: &mut Client,
    req: pb::WarmRequest,
    report: bool,
) -> Result<WarmSummary, Failure> {
    let started = Instant::now();
    let mut stream = client.warm(req).await.map_err(status_failure)?.into_inner();
    let mut rep = report.then(Reporter::new);
    let mut last = None;
    loop {
        match stream.message().await {
            Ok(Some(p)) => {
                if let Some(r) = rep.as_mut() {
                    r.update(&p);
                }
                let done = p.finished;
                last = Some(p);
                if done {
                    break;
                }
            }
            Ok(None) => break,
            Err(s) => {
                if let Some(r) = &rep {
                    r.finish();
                }
                return Err(status_failure(s));
            }
        }
    }
    if let Some(r) = &rep {
        r.finish();
    }
    let p = last
        .filter(|p| p.finished)
        .ok_or_else(|| Failure::new(1, "the daemon ended the warm without finishing it"))?;
    let t = p.transfer.unwrap_or_default();
    Ok(WarmSummary {
        files: p.total_files,
        bytes: p.total_bytes,
        seconds: started.elapsed().as_secs_f64(),
        origin: t.origin_bytes,
        peers: t.peer_bytes,
        local: t.local_bytes,
        nodes: p.nodes,
    })
}

pub async fn warm(socket: &Path, a: WarmArgs) -> Result<(), Failure> {
    for u in &a.select.uris {
        check_uri(u)?;
    }
    let mut client = connect(socket).await?;
    let (pin, scope) = (a.pin, a.scope.clone());
    let req = pb::WarmRequest {
        uris: a.select.uris,
        include: a.select.include,
        exclude: a.select.exclude,
        pin: a.pin,
        scope: a.scope,
        detach: a.detach,
    };
    if a.detach {
        // The first progress message says the daemon took the warm on.
        let mut stream = client.warm(req).await.map_err(status_failure)?.into_inner();
        let first = stream.message().await.map_err(status_failure)?;
        let p = first.unwrap_or_default();
        println!(
            "warming {} files ({}) in the daemon, detached; `locus status` shows what is cached",
            p.total_files,
            locus_core::format_size(p.total_bytes)
        );
        return Ok(());
    }
    let summary = tokio::select! {
        s = warm_with(&mut client, req, true) => s?,
        _ = tokio::signal::ctrl_c() => {
            eprintln!();
            return Err(Failure::new(
                130,
                "interrupted: the daemon stops this warm and keeps what it cached so far (use --detach to leave a warm running)",
            ));
        }
    };
    println!("{summary}");
    if pin && scope == "all-nodes" {
        eprintln!("pinned on this node; other nodes pin only if they run with --accept-peer-pins");
    }
    Ok(())
}

/// Copies a cached file to `out`, checking every chunk against the CRC the daemon recorded.
/// Returns the bytes written: fewer than the size if a chunk failed its check (nothing of that
/// chunk was written; the caller asks the daemon for the rest). Large chunks are mapped
/// (pre-faulted), so the check reads the page cache in place and the write copies them once.
pub fn copy_verified(open: &pb::OpenResponse, out: &mut dyn Write) -> std::io::Result<u64> {
    let f = std::fs::File::open(&open.path)?;
    for (idx, crc) in open.chunk_crc32c.iter().enumerate() {
        let start = idx as u64 * open.chunk_size;
        let end = (start + open.chunk_size).min(open.size);
        // A short file or a failed CRC: nothing of the chunk is written.
        let Ok(bytes) = locus_core::check_stored(&f, start..end, *crc)? else {
            return Ok(start);
        };
        out.write_all(&bytes)?;
    }
    Ok(open.size)
}

pub async fn cat(socket: &Path, uri: &str) -> Result<(), Failure> {
    check_uri(uri)?;
    let mut client = connect(socket).await?;
    let open = client
        .open(pb::OpenRequest {
            uri: uri.to_string(),
        })
        .await
        .map_err(status_failure)?
        .into_inner();
    let size = open.size;
    let stdout = std::io::stdout();
    // Fast path: read the cache file directly (same node), verifying as we go. Nothing is
    // written before its chunk passed its check.
    let direct = tokio::task::spawn_blocking(move || {
        let mut out = stdout.lock();
        let r = copy_verified(&open, &mut out);
        let _ = out.flush();
        r
    })
    .await
    .map_err(|e| Failure::new(1, e.to_string()))?;
    let offset = match direct {
        Ok(n) if n == size => return Ok(()),
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
        // The cache file is not reachable from here (another mount namespace, permissions).
        Err(_) => 0,
    };
    // The daemon reads the rest for us, checking (and fetching again) what fails its check.
    let mut stream = client
        .read(pb::ReadRequest {
            uri: uri.to_string(),
            offset,
        })
        .await
        .map_err(status_failure)?
        .into_inner();
    let mut out = std::io::stdout().lock();
    while let Some(msg) = stream.message().await.map_err(status_failure)? {
        if let Err(e) = out.write_all(&msg.data) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(Failure::new(1, format!("writing to stdout: {e}")));
        }
    }
    let _ = out.flush();
    Ok(())
}

pub async fn ls(socket: &Path, uri: &str, cluster: bool, json: bool) -> Result<(), Failure> {
    check_uri(uri)?;
    let mut client = connect(socket).await?;
    let mut pages = client
        .list_pages(pb::ListRequest {
            uri: uri.to_string(),
            cluster,
            one_level: false,
            max_age_ms: 0,
        })
        .await
        .map_err(status_failure)?
        .into_inner();
    // Printed page by page as they come: a listing of millions of files is never held here.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut unanswered = Vec::new();
    let mut first = true;
    let mut count = 0u64;
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::BrokenPipe => Failure::reader_gone(),
        _ => Failure::new(1, format!("writing the listing: {e}")),
    };
    while let Some(page) = pages.message().await.map_err(status_failure)? {
        if first {
            unanswered = page.unanswered.clone();
            if json {
                // The document's head; its files follow, one per entry.
                let head = serde_json::json!({ "uri": uri, "revision": page.revision });
                let head = head.to_string();
                write!(out, "{}, \"files\": [", &head[..head.len() - 1]).map_err(io)?;
            } else if cluster {
                writeln!(out, "{:>12}  {:>6}  {:>7}  PATH", "SIZE", "NODE", "CLUSTER")
                    .map_err(io)?;
            }
        }
        first = false;
        for e in &page.entries {
            if json {
                let mut j = serde_json::json!({
                    "uri": e.uri, "path": e.path, "size": e.size, "cached_fraction": e.cached_fraction,
                });
                if cluster {
                    j["cluster_fraction"] = e.cluster_fraction.into();
                }
                let sep = if count == 0 { "" } else { "," };
                write!(out, "{sep}{j}").map_err(io)?;
            } else if cluster {
                writeln!(
                    out,
                    "{:>12}  {:>5.1}%  {:>6.1}%  {}",
                    format_size(e.size),
                    e.cached_fraction * 100.0,
                    e.cluster_fraction * 100.0,
                    e.path
                )
                .map_err(io)?;
            } else {
                writeln!(
                    out,
                    "{:>12}  {:>5.1}%  {}",
                    format_size(e.size),
                    e.cached_fraction * 100.0,
                    e.path
                )
                .map_err(io)?;
            }
            count += 1;
        }
    }
    if json {
        write!(out, "]").map_err(io)?;
        if cluster {
            write!(out, ", \"unanswered\": {}", serde_json::json!(unanswered)).map_err(io)?;
        }
        writeln!(out, "}}").map_err(io)?;
    }
    out.flush().map_err(io)?;
    if !unanswered.is_empty() {
        eprintln!(
            "not counted: {} (down or did not answer; {} members)",
            unanswered.join(", "),
            unanswered.len()
        );
    }
    Ok(())
}

pub async fn status(socket: &Path, json: bool) -> Result<(), Failure> {
    let mut client = connect(socket).await?;
    let s = client
        .status(pb::StatusRequest {})
        .await
        .map_err(status_failure)?
        .into_inner();
    if json {
        let members: Vec<_> = s
            .members
            .iter()
            .map(|m| {
                serde_json::json!({
                    "addr": m.addr,
                    "state": m.state,
                    "load": m.load,
                    "self": m.addr == s.node_addr,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "cache_bytes": s.cache_bytes,
                "capacity_bytes": s.capacity_bytes,
                "files": s.files,
                "pinned": s.pinned,
                "pinned_bytes": s.pinned_bytes,
                "version": s.version,
                "hit_ratio": s.hit_ratio,
                "cache_hits": s.cache_hits,
                "cache_misses": s.cache_misses,
                "origin_bytes": s.origin_bytes,
                "peer_bytes": s.peer_bytes,
                "peer_bytes_sent": s.peer_bytes_sent,
                "local_bytes": s.local_bytes,
                "origin_requests": s.origin_requests,
                "origin_calls": s.origin_calls,
                "chunk_size": s.chunk_size,
                "members": members,
                "node_addr": s.node_addr,
            })
        );
    } else {
        println!("node        {}", s.node_addr);
        println!(
            "cache       {} / {} ({} files; pinned: {} files, {})",
            format_size(s.cache_bytes),
            format_size(s.capacity_bytes),
            s.files,
            s.pinned,
            format_size(s.pinned_bytes)
        );
        println!(
            "hit ratio   {:.3} by bytes ({} chunk hits, {} misses)",
            s.hit_ratio, s.cache_hits, s.cache_misses
        );
        println!(
            "bytes from  origin {}, peers {}, local {}",
            format_size(s.origin_bytes),
            format_size(s.peer_bytes),
            format_size(s.local_bytes)
        );
        println!("sent        {} to peers", format_size(s.peer_bytes_sent));
        let mut calls: Vec<_> = s.origin_calls.iter().collect();
        calls.sort();
        println!(
            "origin API  {}",
            calls
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for m in &s.members {
            println!("member      {} {} (load {:.0})", m.addr, m.state, m.load);
        }
    }
    Ok(())
}
