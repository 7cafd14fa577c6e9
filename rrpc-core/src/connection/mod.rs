//! The symmetric connection engine.
//!
//! A connection is two tasks and a shared state. The *reader* decodes frames
//! and routes them: replies to the waiting call, requests to their handlers
//! (answered inline when they can be, parked otherwise, so a slow call never
//! stalls the connection), cancels and releases to the tables. The *writer*
//! owns the socket's write half and coalesces queued frames, cancels and
//! releases into few writes. Both sides of a link run the same engine;
//! either may call the other at any time.

mod codec;
mod dispatch;
mod framing;
mod io;
mod outbox;
mod parked;
mod sink;
mod timers;

use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use dashmap::DashMap;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::runtime::{Handle, Runtime};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::call::OutOp;
use crate::config::Config;
use crate::error::Error;
use crate::handshake::{handshake, Role};
use crate::objects::{ExportTable, ImportTable, ROOT_ID};
use crate::proxy::{Proxy, ProxyInner};
use crate::remote::Remote;
use crate::value::Value;
use crate::wire::Message;

use outbox::{Frames, Outbox};

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// What a draining side tells its peer when it closes.
pub(crate) const SHUTTING_DOWN: &str = "the server is shutting down";

/// Calls started one after another are written by their producer, not the
/// writer task, once this many bytes are queued (see [`sink`]).
pub(crate) const INLINE_MIN: usize = 8 * 1024;

/// How long releases may wait for a write to ride along with.
const RELEASE_DELAY_MS: u64 = 10;
/// At most this many (id, count) pairs go in one release message.
pub(super) const RELEASES_PER_MESSAGE: usize = 4096;

/// Releases waiting for the writer beyond which the peer is deemed not to
/// read (each entry is 16 bytes: this bounds the backlog to 16 MiB).
const MAX_RELEASE_BACKLOG: usize = 1 << 20;

/// A live connection to a peer. Cheap to clone; every clone and every proxy
/// keeps it open. It closes when [`Connection::close`] is called, when the
/// peer goes away, or when the last clone and proxy are dropped.
#[derive(Clone)]
pub struct Connection {
    pub(crate) shared: Arc<Shared>,
    owner: Arc<Owner>,
}

/// Closes the connection when the last user-held handle goes.
struct Owner {
    shared: Weak<Shared>,
    runtime: Mutex<Option<Runtime>>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.shutdown("the peer dropped the connection", Error::Closed);
        }
        let runtime = self
            .runtime
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(runtime) = runtime {
            // Never blocks, so it is safe even from one of the runtime's threads.
            runtime.shutdown_background();
        }
    }
}

/// Work a sync context (a `Drop`) hands to the writer.
#[derive(Default)]
struct Control {
    releases: Vec<(u64, u64)>,
    /// The releases are due: the next write takes them.
    releases_due: bool,
    cancels: Vec<u64>,
    /// A pong is owed (answers to many pings are coalesced into one).
    pong: bool,
    /// A keep-alive ping is due.
    ping: bool,
}

/// The hasher of the tables keyed by request id: fast, and seeded per
/// process (the peer chooses the ids of its requests).
type IdHash = foldhash::fast::RandomState;

/// A request of the peer whose handler did not finish at once.
#[derive(Clone)]
struct Running {
    cancel: crate::cancel::Cancel,
    /// When the timer task stops it (milliseconds since the connection
    /// started; `u64::MAX` for never).
    deadline: u64,
    parked: Arc<parked::Parked>,
}

impl Running {
    /// Cancels the request, and wakes its handler so that it is dropped
    /// (with a timeout reply, if the deadline passed). Never called with
    /// the running table locked: the wake-up may finish the request (its
    /// task dropped at once by a runtime shutting down), which takes it
    /// out of the table.
    fn stop(&self) {
        self.cancel.cancel();
        futures::task::ArcWake::wake_by_ref(&self.parked);
    }
}

/// A call waiting for its reply.
pub(crate) struct Waiter {
    reply: Settle,
    /// When it times out, in milliseconds since the connection started.
    deadline: u64,
    timeout: Duration,
}

/// Where a call's outcome goes.
pub(crate) enum Settle {
    /// To the future awaiting it.
    Await(oneshot::Sender<Result<Value, Error>>),
    /// Into an [`AsyncResult`](crate::AsyncResult), with no task of its own.
    /// The connection handle keeps the connection open while the call runs,
    /// as a task awaiting it would.
    Async(crate::AsyncResult, Connection),
}

impl Waiter {
    fn settle(self, outcome: Result<Value, Error>) {
        match self.reply {
            Settle::Await(tx) => {
                let _ = tx.send(outcome);
            }
            Settle::Async(result, conn) => {
                result.complete(outcome);
                drop(conn);
            }
        }
    }
}

pub(crate) struct Shared {
    id: u64,
    peer: String,
    pub(crate) config: Config,
    /// The largest frame the peer accepts (from its greeting).
    peer_max_frame: usize,
    /// Frames waiting for the writer.
    outbox: Outbox,
    /// The socket's write half.
    sink: Mutex<sink::Sink>,
    control: Mutex<Control>,
    /// Something is in `control`.
    control_pending: AtomicBool,
    /// When queued releases leave if nothing else is written first
    /// (milliseconds since the connection started; `u64::MAX` for none).
    release_due: AtomicU64,
    pending: DashMap<u64, Waiter, IdHash>,
    /// The earliest deadline of a pending call (milliseconds since the
    /// connection started; `u64::MAX` for none). It may be stale (early):
    /// the timer task then finds nothing due and looks again.
    next_deadline: AtomicU64,
    /// Tells the timer task about an earlier deadline.
    deadline_moved: Notify,
    next_request: AtomicU64,
    pub(crate) exports: ExportTable,
    imports: ImportTable,
    running: DashMap<u64, Running, IdHash>,
    /// Requests being served (inline or by a task).
    in_flight: AtomicUsize,
    closed: CancellationToken,
    /// Set with `closed` (which takes a lock to read).
    closed_flag: AtomicBool,
    close_reason: OnceLock<Error>,
    root: Arc<dyn Remote>,
    serving: AtomicBool,
    draining: AtomicBool,
    runtime: Handle,
    owner: OnceLock<Weak<Owner>>,
    tasks: TaskTracker,
    extensions: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
    /// When the connection started; the clocks below count from it (tokio's
    /// clock, so that the timer task and the deadlines agree).
    started: Instant,
    /// The peer sent something since the timer task last looked.
    seen: AtomicBool,
    /// A call was made or served since the timer task last looked.
    busy: AtomicBool,
    /// Notified when the last running request ends (for draining).
    drained: Notify,
    /// Asks the reader to close the connection between two bursts.
    close_requested: Notify,
}

/// Counters of one connection, for tests, monitoring and leak hunting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionStats {
    /// Local objects the peer holds proxies to.
    pub exported_objects: usize,
    /// Live proxies to the peer's objects.
    pub proxies: usize,
    /// Calls made by this side still waiting for a reply.
    pub pending_calls: usize,
    /// Requests from the peer being served.
    pub running_requests: usize,
}

impl Connection {
    /// Runs the handshake over a stream's two halves and starts the engine.
    ///
    /// `root` is what the peer reaches as `connection.root()` on its side;
    /// `peer` names the peer in logs and errors. Must be called within a
    /// tokio runtime; the connection's tasks run on it.
    pub async fn establish<R, W>(
        mut reader: R,
        mut writer: W,
        config: Config,
        root: Arc<dyn Remote>,
        peer: impl Into<String>,
        role: Role,
    ) -> Result<Connection, Error>
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let peer = peer.into();
        let hello = handshake(&mut reader, &mut writer, &config, role).await?;
        let shared = Arc::new(Shared {
            id: NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed),
            peer,
            peer_max_frame: hello.max_frame_len,
            outbox: Outbox::new(config.max_write_buffer),
            sink: Mutex::new(sink::Sink::new(Box::new(writer))),
            control: Mutex::default(),
            control_pending: AtomicBool::new(false),
            release_due: AtomicU64::new(u64::MAX),
            pending: DashMap::with_hasher(IdHash::default()),
            next_deadline: AtomicU64::new(u64::MAX),
            deadline_moved: Notify::new(),
            next_request: AtomicU64::new(1),
            exports: ExportTable::default(),
            imports: ImportTable::default(),
            running: DashMap::with_hasher(IdHash::default()),
            in_flight: AtomicUsize::new(0),
            closed: CancellationToken::new(),
            closed_flag: AtomicBool::new(false),
            close_reason: OnceLock::new(),
            root,
            serving: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            runtime: Handle::current(),
            owner: OnceLock::new(),
            tasks: TaskTracker::new(),
            extensions: Mutex::default(),
            started: Instant::now(),
            seen: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            drained: Notify::new(),
            close_requested: Notify::new(),
            config,
        });
        let owner = Arc::new(Owner {
            shared: Arc::downgrade(&shared),
            runtime: Mutex::new(None),
        });
        // Set once, right here, before any task can read it.
        let _ = shared.owner.set(Arc::downgrade(&owner));
        let conn = Connection {
            shared: shared.clone(),
            owner,
        };
        tracing::debug!(conn = shared.id, peer = %shared.peer, "connection established");
        shared.tasks.spawn(io::read_loop(shared.clone(), reader));
        shared.tasks.spawn(io::write_loop(shared.clone()));
        shared.tasks.spawn(timers::watch(shared.clone()));
        Ok(conn)
    }

    /// Establishes a connection over a TCP stream, as `role`.
    pub async fn over_tcp(
        stream: tokio::net::TcpStream,
        config: Config,
        root: Arc<dyn Remote>,
        role: Role,
    ) -> Result<Connection, Error> {
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "unknown peer".to_owned());
        // Small messages dominate; never let Nagle hold them back.
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        Connection::establish(r, w, config, root, peer, role).await
    }

    /// A proxy to the peer's root object (its exported services).
    pub fn root(&self) -> Proxy {
        Proxy::from_inner(ProxyInner::new(self.clone(), ROOT_ID, Arc::from("root")))
    }

    /// Who the peer is (its address, usually).
    pub fn peer(&self) -> &str {
        &self.shared.peer
    }

    /// A number identifying this connection in logs.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The settings of this connection.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Closes the connection: the peer is told, pending calls fail with
    /// [`Error::Closed`], and every object exported to the peer is released.
    pub fn close(&self) {
        self.shared
            .shutdown("the peer closed the connection", Error::Closed);
    }

    /// Stops taking new requests from the peer, waits up to `grace` for the
    /// running ones to finish, then closes.
    pub async fn drain_and_close(&self, grace: Duration) {
        self.shared.draining.store(true, Ordering::SeqCst);
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        loop {
            // Register before checking, so a drain in between is not missed.
            let drained = self.shared.drained.notified();
            if self.shared.running.is_empty() {
                break;
            }
            tokio::select! {
                _ = drained => {}
                _ = &mut deadline => break,
            }
        }
        // The reader closes between two bursts of frames, after it queued
        // the replies it answered inline: they go out before the goodbye. A
        // reader stuck on a full queue gets a second, then we close anyway.
        self.shared.close_requested.notify_one();
        tokio::select! {
            _ = self.shared.closed.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        self.shared.shutdown(SHUTTING_DOWN, Error::Closed);
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// Completes when the connection has closed, with the reason.
    pub async fn closed(&self) -> Error {
        self.shared.closed.cancelled().await;
        self.shared.reason()
    }

    /// Waits until the connection's own tasks (reader, writer, requests) have
    /// all ended; use after [`close`](Self::close) for a clean stop.
    pub async fn join(&self) {
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }

    /// Counters for tests and monitoring.
    pub fn stats(&self) -> ConnectionStats {
        ConnectionStats {
            exported_objects: self.shared.exports.len(),
            proxies: self.shared.imports.len(),
            pending_calls: self.shared.pending.len(),
            running_requests: self.shared.running.len(),
        }
    }

    /// The background serving handle (RPyC's `BgServingThread`).
    ///
    /// rrpc always serves in the background: replies, incoming requests and
    /// async-result callbacks are handled by the connection's own tasks, so
    /// no thread of yours has to poll. The handle lets you stop (and resume)
    /// serving the peer's requests; replies to your own calls keep flowing.
    pub fn bg_serving(&self) -> BgServing {
        BgServing { conn: self.clone() }
    }

    /// Per-connection state of type `T`, created on first use. Services use
    /// it for things like a working directory or a script scope.
    pub fn extension<T: Default + Send + Sync + 'static>(&self) -> Arc<T> {
        let mut map = self
            .shared
            .extensions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let entry = map
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Arc::new(T::default()) as Arc<dyn Any + Send + Sync>);
        match entry.clone().downcast::<T>() {
            Ok(state) => state,
            // Entries are keyed by their own TypeId, so this cannot happen;
            // a fresh value keeps the signature total.
            Err(_) => Arc::new(T::default()),
        }
    }

    /// Keeps `runtime` alive as long as the connection is referenced (the
    /// blocking client's background runtime).
    pub fn attach_runtime(&self, runtime: Runtime) {
        *self.owner.runtime.lock().unwrap_or_else(|p| p.into_inner()) = Some(runtime);
    }

    /// The runtime the connection's tasks run on.
    pub fn runtime(&self) -> &Handle {
        &self.shared.runtime
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.shared.id)
            .field("peer", &self.shared.peer)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Controls whether the connection serves the peer's requests; see
/// [`Connection::bg_serving`].
#[derive(Debug, Clone)]
pub struct BgServing {
    conn: Connection,
}

impl BgServing {
    /// Stops serving the peer's requests: they are refused with a clear error.
    pub fn stop(&self) {
        self.conn.shared.serving.store(false, Ordering::SeqCst);
    }

    /// Serves the peer's requests again.
    pub fn resume(&self) {
        self.conn.shared.serving.store(true, Ordering::SeqCst);
    }

    /// Whether the peer's requests are being served.
    pub fn is_running(&self) -> bool {
        self.conn.shared.serving.load(Ordering::SeqCst) && !self.conn.is_closed()
    }
}

/// Forgets a pending call whose future is dropped before its reply came,
/// and tells the peer to cancel it. (Whoever settles a call, the reader with
/// the reply or the timer task at the deadline, has already removed it.)
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
    settled: bool,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if !self.settled && self.shared.pending.remove(&self.id).is_some() {
            self.shared.send_cancel(self.id);
        }
    }
}

thread_local! {
    /// Where requests and replies are encoded before they join the outbox
    /// (a buffer reused by every call made on this thread).
    static SCRATCH: RefCell<Frames> = RefCell::new(Frames::default());
}

/// Runs `f` with an empty [`Frames`] to encode into: this thread's scratch
/// buffer, or a fresh one if it is in use (a `Drop` making a call while a
/// message is being encoded) or gone (thread exit).
fn with_scratch<R>(f: impl FnOnce(&mut Frames) -> R) -> R {
    let mut f = Some(f);
    let reused = SCRATCH.try_with(|cell| {
        let mut frames = cell.try_borrow_mut().ok()?;
        frames.clear();
        let f = f.take()?;
        Some(f(&mut frames))
    });
    match (reused, f) {
        (Ok(Some(result)), _) => result,
        (_, Some(f)) => f(&mut Frames::default()),
        // `f` was taken only when it ran and its result came back.
        (_, None) => unreachable!("the scratch closure ran without a result"),
    }
}

impl Shared {
    /// The reason the connection closed (or `Closed` while it is open).
    pub(crate) fn reason(&self) -> Error {
        self.close_reason.get().cloned().unwrap_or(Error::Closed)
    }

    fn connection(&self) -> Option<Connection> {
        let owner = self.owner.get()?.upgrade()?;
        let shared = owner.shared.upgrade()?;
        Some(Connection { shared, owner })
    }

    /// Whether the connection is closed (a load, no lock).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed_flag.load(Ordering::Acquire)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The peer sent something: it is alive. (A flag, not a clock: the
    /// timer task notes the time when it sees the flag.)
    pub(crate) fn touch(&self) {
        if !self.seen.load(Ordering::Relaxed) {
            self.seen.store(true, Ordering::Relaxed);
        }
    }

    /// A call was made or served: the connection is not idle.
    pub(crate) fn active(&self) {
        if !self.busy.load(Ordering::Relaxed) {
            self.busy.store(true, Ordering::Relaxed);
        }
    }

    /// Makes a call and waits for its reply, its deadline or the connection's end.
    pub(crate) async fn call(
        &self,
        target: u64,
        op: OutOp,
        timeout: Option<Duration>,
    ) -> Result<Value, Error> {
        if self.is_closed() {
            return Err(self.reason());
        }
        // A peer that does not read makes callers wait here, not queue more.
        self.outbox.reserve(&self.closed).await;
        let (tx, rx) = oneshot::channel();
        // The caller waits from here on: its request leaves at once, written
        // from here if the writer is idle, instead of after a hand-off.
        let id = self.send_call(target, &op, timeout, Settle::Await(tx), 0)?;
        let mut guard = PendingGuard {
            shared: self,
            id,
            settled: false,
        };
        let result = rx.await;
        guard.settled = true;
        match result {
            Ok(result) => result,
            // The connection closed and dropped every pending sender.
            Err(_) => Err(self.reason()),
        }
    }

    /// Whether a call can be sent now without waiting for the peer to read.
    pub(crate) fn has_room(&self) -> bool {
        !self.outbox.is_full()
    }

    /// Sends a call whose outcome goes to `settle`; returns its id. Does not
    /// wait: callers that can wait for room in the outbox do so first. The
    /// request is written from here when `inline_min` bytes are queued and
    /// the writer is idle.
    pub(crate) fn send_call(
        &self,
        target: u64,
        op: &OutOp,
        timeout: Option<Duration>,
        settle: Settle,
        inline_min: usize,
    ) -> Result<u64, Error> {
        if self.is_closed() {
            return Err(self.reason());
        }
        let timeout = timeout.unwrap_or(self.config.call_timeout);
        self.active();
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        // Rounded up: a call never times out before its timeout has passed.
        let deadline = self
            .now_ms()
            .saturating_add(codec::timeout_ms(timeout))
            .saturating_add(1);
        let waiter = Waiter {
            reply: settle,
            deadline,
            timeout,
        };
        with_scratch(|frames| {
            self.encode_request(id, target, timeout, op, frames)?;
            // Registered before the request can leave, so the reply finds it.
            self.pending.insert(id, waiter);
            self.send(frames, inline_min);
            Ok::<_, Error>(())
        })?;
        self.deadline_at(deadline);
        if self.is_closed() {
            // Closed meanwhile, perhaps after the pending calls were failed.
            if let Some((_, waiter)) = self.pending.remove(&id) {
                waiter.settle(Err(self.reason()));
            }
        }
        Ok(id)
    }

    /// The held releases are due: the next write takes them (the writer is
    /// woken for it).
    fn releases_due(&self) {
        {
            let mut control = self.control.lock().unwrap_or_else(|p| p.into_inner());
            control.releases_due = true;
            self.release_due.store(u64::MAX, Ordering::Release);
        }
        self.control_queued();
    }

    /// Something has a deadline at `ms`: the timer task must wake by then.
    fn deadline_at(&self, ms: u64) {
        if ms < self.next_deadline.load(Ordering::Acquire) {
            self.next_deadline.fetch_min(ms, Ordering::AcqRel);
            self.deadline_moved.notify_one();
        }
    }

    /// Fails the pending calls whose deadline has passed (and tells the
    /// peer to cancel them), cancels the requests past theirs (their
    /// handlers are dropped and answered with a timeout); `next_deadline`
    /// becomes the earliest left.
    fn expire(&self) {
        let now = self.now_ms();
        // Whatever is registered from here on lowers this again.
        self.next_deadline.store(u64::MAX, Ordering::SeqCst);
        let mut due = Vec::new();
        let mut stopping = Vec::new();
        let mut next = u64::MAX;
        for entry in self.pending.iter() {
            if entry.deadline <= now {
                due.push(*entry.key());
            } else {
                next = next.min(entry.deadline);
            }
        }
        for entry in self.running.iter() {
            if entry.cancel.is_cancelled() {
                continue; // its task is on its way out
            }
            if entry.deadline <= now {
                tracing::debug!(
                    conn = self.id,
                    request = *entry.key(),
                    "request past its deadline"
                );
                stopping.push(entry.value().clone());
            } else {
                next = next.min(entry.deadline);
            }
        }
        self.next_deadline.fetch_min(next, Ordering::SeqCst);
        stopping.iter().for_each(Running::stop);
        for id in due {
            if let Some((_, waiter)) = self.pending.remove(&id) {
                tracing::debug!(conn = self.id, request = id, "call timed out");
                let timeout = waiter.timeout;
                waiter.settle(Err(Error::Timeout(timeout)));
                self.send_cancel(id);
            }
        }
    }

    fn send_cancel(&self, id: u64) {
        if self.is_closed() {
            return;
        }
        self.control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cancels
            .push(id);
        self.control_queued();
    }

    /// A proxy's last clone went: forget it and release its references.
    pub(crate) fn proxy_dropped(&self, id: u64, ptr: *const ProxyInner, refs: u64) {
        self.imports.forget(id, ptr);
        if refs == 0 || self.is_closed() {
            return;
        }
        // Releases are not urgent: they are held a little (RELEASE_DELAY_MS)
        // and leave together, a full message's worth at once. An object the
        // peer sends again meanwhile (a callback passed with every call)
        // then keeps its export there, instead of being released and
        // exported anew each time: its releases add up to one entry.
        let (backlog, due) = {
            let mut control = self.control.lock().unwrap_or_else(|p| p.into_inner());
            match control.releases.last_mut() {
                Some((last, n)) if *last == id => *n = n.saturating_add(refs),
                _ => control.releases.push((id, refs)),
            }
            let backlog = control.releases.len();
            // The first of a batch sets when the batch leaves.
            let due = !control.releases_due && self.release_due.load(Ordering::Acquire) == u64::MAX;
            if due {
                let at = self.now_ms().saturating_add(RELEASE_DELAY_MS);
                self.release_due.store(at, Ordering::Release);
            }
            if backlog >= RELEASES_PER_MESSAGE {
                control.releases_due = true;
            }
            (backlog, due)
        };
        if due {
            // The timer task sleeps until then, or less (about once per
            // RELEASE_DELAY_MS while objects are being released).
            self.deadline_moved.notify_one();
        }
        if backlog >= RELEASES_PER_MESSAGE {
            self.control_queued();
        }
        if backlog > MAX_RELEASE_BACKLOG {
            // The peer keeps sending references but never reads: stop here
            // rather than let the backlog grow without bound.
            self.shutdown(
                "the peer does not read its messages",
                Error::ConnectionLost("the peer stopped reading (release backlog overflow)".into()),
            );
        }
    }

    /// Tells the peer why, then closes with `reason` for local callers.
    pub(crate) fn shutdown(&self, told_peer: &str, reason: Error) {
        if self.is_closed() {
            return;
        }
        let goodbye = Message::Goodbye {
            reason: told_peer.into(),
        };
        let mut frame = Frames::default();
        if frame.encode(&goodbye, &[], usize::MAX).is_ok() {
            // One small frame, whatever is queued: the writer's last flush
            // sends it if the peer still reads.
            self.send(&mut frame, usize::MAX);
        }
        self.close(reason);
    }

    /// Marks the connection closed with `reason` (the first reason wins),
    /// fails every pending call and releases everything the peer held.
    pub(crate) fn close(&self, reason: Error) {
        if self.close_reason.set(reason).is_err() {
            return;
        }
        tracing::debug!(conn = self.id, peer = %self.peer, reason = %self.reason(), "connection closed");
        self.closed_flag.store(true, Ordering::Release);
        self.closed.cancel();
        // Every waiting call fails with the reason.
        let ids: Vec<u64> = self.pending.iter().map(|e| *e.key()).collect();
        for id in ids {
            if let Some((_, waiter)) = self.pending.remove(&id) {
                waiter.settle(Err(self.reason()));
            }
        }
        // Stop the running requests: each handler is woken to be dropped
        // (the tokens also tell blocking handlers that poll `is_cancelled`).
        // Out of the table first: stopping one may take it out.
        let running: Vec<Running> = self.running.iter().map(|e| e.value().clone()).collect();
        running.iter().for_each(Running::stop);
        let released = self.exports.clear();
        self.imports.clear();
        self.control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .releases
            .clear();
        drop(released);
    }
}
