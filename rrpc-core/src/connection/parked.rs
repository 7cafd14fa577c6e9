//! Requests whose handler did not finish at its first poll: *parked*.
//!
//! Such a handler usually waits for something this same connection will
//! bring, above all the reply to a call it made back to its caller (a
//! callback). That reply wakes it from this connection's reader, in the
//! middle of a burst of frames: the reader then polls the handler right
//! there, after the frame that woke it, and the reply joins the burst's
//! batch. No task, no hand-off, no extra write.
//!
//! A wake-up from anywhere else (a timer, another connection, the blocking
//! pool, a cancel from the timer task) *promotes* the handler to a task of
//! its own, which serves it from then on; so does a handler that wakes
//! itself while the reader polls it (it would otherwise hold the reader).
//! Either way, one poller at a time: the reader until promotion, then the
//! task; the slot's lock settles the moment of hand-over.

use std::cell::{Cell, RefCell};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::{ArcWake, AtomicWaker};

use crate::cancel::Cancel;
use crate::error::{ErrorKind, RemoteError};
use crate::remote::Remote;
use crate::value::Value;

use super::dispatch::{in_context, panicked, InFlight, What, Work};
use super::outbox::Frames;
use super::Shared;

thread_local! {
    /// The connection whose reader is handling a burst on this thread (its
    /// address, only ever compared), or 0.
    static READER: Cell<usize> = const { Cell::new(0) };
    /// Parked handlers that reader must poll before the burst ends.
    static READY: RefCell<Vec<Arc<Parked>>> = const { RefCell::new(Vec::new()) };
}

/// One request whose handler is pending, or was.
pub(super) struct Parked {
    conn: Weak<Shared>,
    /// The request's id, as the peer numbered it.
    id: u64,
    /// On this thread's ready list, to be polled by the reader.
    queued: AtomicBool,
    /// Served by a task from now on.
    promoted: AtomicBool,
    /// The task's waker, once promoted.
    task: AtomicWaker,
    slot: Mutex<Slot>,
}

struct Slot {
    /// `None` once finished.
    work: Option<Work>,
    /// Held until the request is done.
    permit: Option<InFlight>,
    /// Set once the first poll was pending (before that, only the reader
    /// that polls it knows it).
    request: Option<Request>,
}

/// What a parked request needs to finish.
pub(super) struct Request {
    pub(super) obj: Arc<dyn Remote>,
    pub(super) what: What,
    pub(super) cancel: Cancel,
    /// The caller's timeout plus grace, if it gave one.
    pub(super) limit: Option<Duration>,
    /// When it is stopped (milliseconds since the connection started).
    pub(super) deadline: u64,
    pub(super) span: tracing::Span,
}

/// How polling a parked request went.
enum Polled {
    Pending,
    /// It finished: a reply is owed, or not (cancelled by the peer).
    Done(Option<Result<Value, RemoteError>>),
    /// Someone else finished it.
    Gone,
}

/// Drops a handler's future; a `Drop` that panics is contained here like a
/// panicking poll (it must not unwind the reader).
fn drop_work(work: Option<Work>) {
    if std::panic::catch_unwind(AssertUnwindSafe(move || drop(work))).is_err() {
        tracing::warn!("a request handler panicked while being dropped");
    }
}

fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    // Handlers are polled under `catch_unwind`: the lock is never poisoned
    // by them, and the slot is consistent at every unlock.
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

impl Parked {
    pub(super) fn new(shared: &Arc<Shared>, id: u64, work: Work, permit: InFlight) -> Arc<Parked> {
        Arc::new(Parked {
            conn: Arc::downgrade(shared),
            id,
            queued: AtomicBool::new(false),
            promoted: AtomicBool::new(false),
            task: AtomicWaker::new(),
            slot: Mutex::new(Slot {
                work: Some(work),
                permit: Some(permit),
                request: None,
            }),
        })
    }

    /// The first poll, by the reader: `Ready` with the handler's outcome
    /// (the request is over and its permit released once this returns),
    /// or `Pending` (then [`park`](Self::park) it).
    pub(super) fn first_poll(self: &Arc<Self>) -> Poll<Result<Value, RemoteError>> {
        let waker = futures::task::waker_ref(self);
        let mut cx = Context::from_waker(&waker);
        let mut slot = lock(&self.slot);
        let Some(work) = slot.work.as_mut() else {
            return Poll::Ready(Err(RemoteError::internal("the handler vanished")));
        };
        let polled =
            match std::panic::catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(&mut cx))) {
                Ok(Poll::Pending) => return Poll::Pending,
                Ok(Poll::Ready(result)) => result,
                Err(panic) => Err(panicked(&*panic)),
            };
        let (work, permit) = (slot.work.take(), slot.permit.take());
        drop(slot);
        drop_work(work);
        drop(permit);
        self.after_reader_poll();
        Poll::Ready(polled)
    }

    /// After the reader polled it, whatever the outcome: a task promoted
    /// meanwhile may have found the slot busy and wait to be woken (it then
    /// serves the handler, or finds it gone and ends).
    fn after_reader_poll(&self) {
        if self.promoted.load(Ordering::SeqCst) {
            self.task.wake();
        }
    }

    /// Makes a request whose first poll was pending known: it is in the
    /// running table (so it can be cancelled) before anyone else polls it.
    pub(super) fn park(self: &Arc<Self>, shared: &Shared, request: Request) {
        let deadline = request.deadline;
        shared.running.insert(
            self.id,
            super::Running {
                cancel: request.cancel.clone(),
                deadline,
                parked: self.clone(),
            },
        );
        shared.deadline_at(deadline);
        let gone = {
            let mut slot = lock(&self.slot);
            // Set once, here: nobody polls it before (see `poll_work`).
            slot.request = Some(request);
            slot.work.is_none()
        };
        if gone {
            // Its task was dropped meanwhile (a runtime shutting down).
            self.retire(shared);
            return;
        }
        if shared.is_closed() {
            // Closed meanwhile: `close` may have stopped the running
            // requests before this one was among them.
            if let Some(request) = lock(&self.slot).request.as_ref() {
                request.cancel.cancel();
            }
            ArcWake::wake_by_ref(self);
        }
        if self.promoted.load(Ordering::SeqCst) {
            // Woken from elsewhere during the first poll: its task waits
            // for the request to be known.
            self.task.wake();
        }
    }

    /// Polls the handler (the slot locked by the caller): its work first,
    /// then, if still pending, whether it was cancelled meanwhile.
    fn poll_work(&self, slot: &mut Slot, shared: &Shared, cx: &mut Context<'_>) -> Polled {
        let Slot {
            work: held,
            request,
            ..
        } = slot;
        let Some(work) = held.as_mut() else {
            return Polled::Gone;
        };
        let Some(request) = request.as_ref() else {
            return Polled::Pending; // being parked; the reader wakes the task then
        };
        let polled = {
            let _entered = request.span.enter();
            std::panic::catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(cx)))
        };
        let outcome = match polled {
            Ok(Poll::Ready(result)) => Some(result),
            Err(panic) => Some(Err(panicked(&*panic))),
            Ok(Poll::Pending) if !request.cancel.is_cancelled() => return Polled::Pending,
            // Stopped by the timer task at the deadline, by the peer, or by
            // the connection's end. No answer is owed to a peer that
            // cancelled (it took the request out of the table first).
            Ok(Poll::Pending) => {
                let timed_out = shared.now_ms() >= request.deadline && self.in_table(shared);
                timed_out.then(|| {
                    Err(RemoteError::new(
                        ErrorKind::Timeout,
                        format!(
                            "the call ran past its deadline of {:?} and was stopped",
                            request.limit
                        ),
                    ))
                })
            }
        };
        drop_work(held.take());
        let outcome =
            outcome.map(|r| r.map_err(|e| in_context(e, request.obj.as_ref(), &request.what)));
        let _entered = request.span.enter();
        match &outcome {
            Some(Err(e)) => tracing::debug!("request failed: {e}"),
            Some(Ok(_)) => {}
            None => tracing::debug!("request cancelled"),
        }
        Polled::Done(outcome)
    }

    /// Whether the running table still holds this request (not a newer
    /// one with the same id).
    fn in_table(&self, shared: &Shared) -> bool {
        shared
            .running
            .get(&self.id)
            .is_some_and(|running| std::ptr::eq(Arc::as_ptr(&running.parked), self))
    }

    /// A poll by the promoted task.
    fn poll_task(&self, shared: &Shared, cx: &mut Context<'_>) -> Poll<Polled> {
        self.task.register(cx.waker());
        let mut slot = match self.slot.try_lock() {
            Ok(slot) => slot,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            // The reader is polling it: it wakes this task when done.
            Err(std::sync::TryLockError::WouldBlock) => return Poll::Pending,
        };
        match self.poll_work(&mut slot, shared, cx) {
            Polled::Pending => Poll::Pending,
            done => Poll::Ready(done),
        }
    }

    /// The request is over (its reply, if any, queued): out of the
    /// running table, and its in-flight slot freed.
    fn retire(self: &Arc<Self>, shared: &Shared) {
        self.leave_table(shared);
        // A stale clone of its waker may keep the cell alive: not the
        // request's object, span and permit with it.
        let (permit, request) = {
            let mut slot = lock(&self.slot);
            (slot.permit.take(), slot.request.take())
        };
        drop(permit);
        drop(request);
    }

    /// Out of the running table (only the request it put there).
    fn leave_table(self: &Arc<Self>, shared: &Shared) {
        shared
            .running
            .remove_if(&self.id, |_, running| Arc::ptr_eq(&running.parked, self));
        // Only a drain waits for the table to empty (it sets `draining`
        // before it looks). (A peer's cancel may have taken the entry out
        // already: the check is made anyway.)
        if shared.draining.load(Ordering::SeqCst) && shared.running.is_empty() {
            shared.drained.notify_waiters();
        }
    }

    /// Hands the request to a task of its own.
    fn promote(self: &Arc<Self>) {
        if self.promoted.swap(true, Ordering::SeqCst) {
            self.task.wake();
            return;
        }
        let Some(shared) = self.conn.upgrade() else {
            return; // the connection is gone, and the work with it
        };
        let task = Promoted {
            shared: shared.clone(),
            parked: self.clone(),
            done: false,
        };
        // Through the runtime's handle: a wake-up may come from any thread.
        let task = shared.tasks.track_future(task.serve());
        drop(shared.runtime.spawn(task));
    }
}

impl ArcWake for Parked {
    fn wake_by_ref(me: &Arc<Self>) {
        if me.promoted.load(Ordering::SeqCst) {
            me.task.wake();
            return;
        }
        let ours = READER.try_with(Cell::get).ok() == Some(me.conn.as_ptr() as usize);
        if ours {
            if me.queued.swap(true, Ordering::AcqRel) {
                return; // already on the list
            }
            let pushed = READY.try_with(|ready| ready.borrow_mut().push(me.clone()));
            if pushed.is_ok() {
                return;
            }
            me.queued.store(false, Ordering::Release);
        }
        me.promote();
    }
}

/// The task of a promoted request. Dropped unfinished (its runtime shut
/// down), it still takes the request out of the table and drops its work.
struct Promoted {
    shared: Arc<Shared>,
    parked: Arc<Parked>,
    done: bool,
}

impl Promoted {
    async fn serve(mut self) {
        let (shared, parked) = (self.shared.clone(), self.parked.clone());
        let polled = std::future::poll_fn(|cx| parked.poll_task(&shared, cx)).await;
        if let Polled::Done(reply) = polled {
            if let Some(result) = reply {
                shared.send_reply(parked.id, result).await;
            }
            // Only once the reply is queued does the request stop counting
            // as running: a drain then closes after it, and the reply goes
            // out before the goodbye.
            parked.retire(&shared);
        }
        self.done = true;
    }
}

impl Drop for Promoted {
    fn drop(&mut self) {
        if !self.done {
            // (Not `lock`: this may run on the thread that holds the slot;
            // the work and permit then go with the last reference.)
            //
            // A runtime that is shutting down drops a task the moment it is
            // spawned: this then runs inside the `wake` that promoted the
            // request, and the handler's `Drop` with it.
            let taken = match self.parked.slot.try_lock() {
                Ok(mut slot) => Some((slot.work.take(), slot.permit.take(), slot.request.take())),
                Err(std::sync::TryLockError::Poisoned(p)) => {
                    let mut slot = p.into_inner();
                    Some((slot.work.take(), slot.permit.take(), slot.request.take()))
                }
                Err(std::sync::TryLockError::WouldBlock) => None,
            };
            self.parked.leave_table(&self.shared);
            if let Some((work, permit, request)) = taken {
                drop_work(work);
                drop(permit);
                drop(request);
            }
        }
    }
}

/// Marks this thread as running `shared`'s reader for the span of one
/// burst; parked handlers it wakes meanwhile are polled by
/// [`serve_ready`] before the burst ends, the others promoted.
pub(super) struct ReaderScope {
    previous: usize,
}

impl ReaderScope {
    pub(super) fn enter(shared: &Arc<Shared>) -> ReaderScope {
        let me = Arc::as_ptr(shared) as usize;
        let previous = READER.try_with(|r| r.replace(me)).unwrap_or(0);
        // Readers never nest (a burst runs no other reader): the ready list
        // belongs to this one.
        debug_assert_eq!(previous, 0, "reader scopes nested");
        ReaderScope { previous }
    }
}

impl Drop for ReaderScope {
    fn drop(&mut self) {
        let _ = READER.try_with(|r| r.set(self.previous));
        // Whatever is still listed (a burst that unwound) goes to
        // tasks rather than being forgotten.
        promote_ready();
    }
}

/// Hands whatever is on this thread's ready list to tasks.
fn promote_ready() {
    if nothing_ready() {
        return;
    }
    let mut ready = take_ready();
    for parked in ready.drain(..) {
        parked.queued.store(false, Ordering::Release);
        parked.promote();
    }
    give_back(ready);
}

fn nothing_ready() -> bool {
    READY
        .try_with(|ready| ready.borrow().is_empty())
        .unwrap_or(true)
}

fn take_ready() -> Vec<Arc<Parked>> {
    READY
        .try_with(|ready| std::mem::take(&mut *ready.borrow_mut()))
        .unwrap_or_default()
}

/// The most room a thread's ready list keeps between bursts (8 KiB); a
/// larger one, left by an exceptional burst, is freed.
const READY_KEEP: usize = 1024;

/// Returns a taken list's room to the thread (unless the list was refilled
/// meanwhile): the next burst's wake-ups then push without allocating.
fn give_back(mut list: Vec<Arc<Parked>>) {
    if list.capacity() == 0 || list.capacity() > READY_KEEP {
        return;
    }
    list.clear();
    let _ = READY.try_with(|ready| {
        let mut ready = ready.borrow_mut();
        if ready.is_empty() {
            std::mem::swap(&mut *ready, &mut list);
        }
    });
}

/// Polls, on the reader, the parked handlers woken during this burst;
/// the replies of those that finish join `replies`. Each is polled once:
/// one woken again meanwhile is promoted to a task.
pub(super) fn serve_ready(shared: &Arc<Shared>, replies: &mut Frames) {
    if nothing_ready() {
        return;
    }
    let mut ready = take_ready();
    // The reader's coop budget is spent (a long burst): what the handlers
    // wait on would answer `Pending` and wake them again at once. Their
    // tasks serve them instead, with budgets of their own.
    let spent = !tokio::task::coop::has_budget_remaining();
    for parked in ready.drain(..) {
        parked.queued.store(false, Ordering::Release);
        if parked.promoted.load(Ordering::SeqCst) {
            continue; // its task serves it
        }
        if spent {
            parked.promote();
            continue;
        }
        let polled = {
            let waker = futures::task::waker_ref(&parked);
            let mut cx = Context::from_waker(&waker);
            let mut slot = match parked.slot.try_lock() {
                Ok(slot) => slot,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                // Only its promoted task can hold it: it serves it.
                Err(std::sync::TryLockError::WouldBlock) => continue,
            };
            parked.poll_work(&mut slot, shared, &mut cx)
        };
        parked.after_reader_poll();
        match polled {
            Polled::Pending => {}
            Polled::Done(reply) => {
                if let Some(result) = reply {
                    shared.reply_into(parked.id, &result, replies);
                }
                parked.retire(shared);
            }
            Polled::Gone => {}
        }
    }
    give_back(ready);
    promote_ready();
}
