//! The agent's event queue and its hand-registered ttrpc method
//! `vmmsandbox.agent.v1.Events/Next`.
//!
//! Events are containerd `Envelope`s (namespace "default", topic such as
//! "/tasks/exit", event = Any whose type_url is the message's full protobuf
//! name, the way containerd's typeurl package names them). The queue is
//! bounded: when full, the oldest event is dropped with a warning.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use containerd_shim_protos::shim::event::Envelope;
use protobuf::well_known_types::any::Any;
use protobuf::well_known_types::timestamp::Timestamp;
use protobuf::{Message, MessageFull};
use ttrpc::{MethodHandler, TtrpcContext};

/// ttrpc service name of the events method.
pub const EVENTS_SERVICE: &str = "vmmsandbox.agent.v1.Events";
/// ttrpc method name of the events method.
pub const EVENTS_METHOD: &str = "Next";
/// Default queue capacity.
pub const DEFAULT_CAPACITY: usize = 1024;
/// Namespace put in every envelope.
pub const NAMESPACE: &str = "default";

/// Bounded FIFO of envelopes with blocking pop.
pub struct EventQueue {
    inner: Mutex<VecDeque<Envelope>>,
    ready: Condvar,
    capacity: usize,
}

impl EventQueue {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Envelope>> {
        // A poisoned queue still holds valid envelopes.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `event` under `topic`.
    pub fn publish<M: MessageFull>(&self, topic: &str, event: &M) {
        let value = match event.write_to_bytes() {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(topic, "cannot encode event: {e}");
                return;
            }
        };
        let mut any = Any::new();
        any.type_url = M::descriptor().full_name().to_string();
        any.value = value;
        let mut env = Envelope::new();
        env.timestamp = protobuf::MessageField::some(Timestamp::from(SystemTime::now()));
        env.namespace = NAMESPACE.to_string();
        env.topic = topic.to_string();
        env.event = protobuf::MessageField::some(any);
        self.push(env);
    }

    /// Appends an envelope, dropping the oldest one when full.
    pub fn push(&self, env: Envelope) {
        let mut q = self.lock();
        if q.len() >= self.capacity {
            if let Some(old) = q.pop_front() {
                tracing::warn!(topic = %old.topic, "event queue full: dropped the oldest event");
            }
        }
        q.push_back(env);
        drop(q);
        self.ready.notify_one();
    }

    /// Puts an envelope back at the head (delivery failed).
    fn requeue(&self, env: Envelope) {
        let mut q = self.lock();
        if q.len() < self.capacity {
            q.push_front(env);
        }
        drop(q);
        self.ready.notify_one();
    }

    /// Pops the oldest event, waiting until `deadline` (or for ever when
    /// `None`) while `cancelled` stays false. Waits in short slices so a
    /// cancelled request frees its thread.
    pub fn pop(&self, deadline: Option<Instant>, cancelled: &dyn Fn() -> bool) -> Option<Envelope> {
        let slice = Duration::from_millis(100);
        let mut q = self.lock();
        loop {
            if let Some(e) = q.pop_front() {
                return Some(e);
            }
            if cancelled() {
                return None;
            }
            let wait = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    (d - now).min(slice)
                }
                None => slice,
            };
            q = self
                .ready
                .wait_timeout(q, wait)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The `Next` method handler.
struct NextMethod {
    queue: Arc<EventQueue>,
}

/// How much earlier than the client's own deadline the agent answers
/// DeadlineExceeded, so the status reaches the client before it gives up.
fn answer_margin(timeout: Duration) -> Duration {
    (timeout / 10).min(Duration::from_millis(20))
}

impl MethodHandler for NextMethod {
    fn handler(&self, ctx: TtrpcContext, _req: ttrpc::Request) -> ttrpc::Result<()> {
        // The request body is google.protobuf.Empty: nothing to decode.
        let deadline = u64::try_from(ctx.timeout_nano)
            .ok()
            .filter(|n| *n > 0)
            .and_then(|n| {
                let t = Duration::from_nanos(n);
                Instant::now().checked_add(t - answer_margin(t))
            });
        let cancel = ctx.cancel_rx.clone();
        let cancelled = move || {
            matches!(
                cancel.try_recv(),
                Ok(()) | Err(crossbeam::channel::TryRecvError::Disconnected)
            )
        };
        let res = match self.queue.pop(deadline, &cancelled) {
            Some(env) => {
                let payload = match env.write_to_bytes() {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!("cannot encode envelope: {e}");
                        return ctx.respond(
                            ctx.mh.stream_id,
                            status_response(ttrpc::Code::INTERNAL, e.to_string()),
                        );
                    }
                };
                let mut res = status_response(ttrpc::Code::OK, String::new());
                res.payload = payload;
                if let Err(e) = ctx.respond(ctx.mh.stream_id, res) {
                    self.queue.requeue(env);
                    return Err(e);
                }
                return Ok(());
            }
            None => status_response(
                ttrpc::Code::DEADLINE_EXCEEDED,
                "no event before the deadline",
            ),
        };
        ctx.respond(ctx.mh.stream_id, res)
    }
}

fn status_response(code: ttrpc::Code, msg: impl ToString) -> ttrpc::Response {
    let mut res = ttrpc::Response::new();
    res.set_status(ttrpc::get_status(code, msg));
    res
}

/// The method table to hand to `ttrpc::Server::register_service`.
pub fn service(queue: Arc<EventQueue>) -> HashMap<String, Box<dyn MethodHandler + Send + Sync>> {
    let mut methods: HashMap<String, Box<dyn MethodHandler + Send + Sync>> = HashMap::new();
    methods.insert(
        format!("/{EVENTS_SERVICE}/{EVENTS_METHOD}"),
        Box::new(NextMethod { queue }),
    );
    methods
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::events::task::TaskExit;

    fn never() -> bool {
        false
    }

    #[test]
    fn publish_then_pop_keeps_order_and_type() {
        let q = EventQueue::new(8);
        for pid in 1..=3 {
            let mut e = TaskExit::new();
            e.pid = pid;
            q.publish("/tasks/exit", &e);
        }
        for pid in 1..=3 {
            let env = q.pop(Some(Instant::now()), &never).unwrap();
            assert_eq!(env.topic, "/tasks/exit");
            assert_eq!(env.namespace, "default");
            let any = env.event.unwrap();
            assert_eq!(any.type_url, "containerd.events.TaskExit");
            assert_eq!(TaskExit::parse_from_bytes(&any.value).unwrap().pid, pid);
        }
        assert!(q.is_empty());
    }

    #[test]
    fn full_queue_drops_oldest() {
        let q = EventQueue::new(2);
        for pid in 1..=3 {
            let mut e = TaskExit::new();
            e.pid = pid;
            q.publish("/tasks/exit", &e);
        }
        assert_eq!(q.len(), 2);
        let first = q.pop(None, &never).unwrap();
        assert_eq!(
            TaskExit::parse_from_bytes(&first.event.value).unwrap().pid,
            2
        );
    }

    #[test]
    fn pop_times_out_and_cancels() {
        let q = EventQueue::new(2);
        let start = Instant::now();
        assert!(q
            .pop(Some(start + Duration::from_millis(50)), &never)
            .is_none());
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert!(q.pop(None, &|| true).is_none());
    }

    #[test]
    fn pop_wakes_on_publish() {
        let q = Arc::new(EventQueue::new(4));
        let q2 = q.clone();
        let t = std::thread::spawn(move || {
            q2.pop(Some(Instant::now() + Duration::from_secs(5)), &never)
        });
        std::thread::sleep(Duration::from_millis(20));
        q.publish("/tasks/exit", &TaskExit::new());
        assert!(t.join().unwrap().is_some());
    }

    #[test]
    fn margin_is_small() {
        assert_eq!(
            answer_margin(Duration::from_millis(100)),
            Duration::from_millis(10)
        );
        assert_eq!(
            answer_margin(Duration::from_secs(10)),
            Duration::from_millis(20)
        );
    }
}
