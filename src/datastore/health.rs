//! Whether the database answers: one verdict per server, kept by a small prober, that
//! readiness, the API's fast-fail gate and every datastore call consult.
//!
//! The prober owns one connection of its own (not the pool's: a busy pool says nothing about
//! the database) and pings it at the protocol level every [`PERIOD`] — PostgreSQL's `Sync`,
//! MySQL's `COM_PING`; neither is a statement, neither touches a table. The verdict turns to
//! [`State::Down`] only on a hard signal:
//!
//! - a connection attempt that fails (refused, reset, TLS or login refused), or
//! - a ping or connection attempt with no answer at all within [`DEADLINE`] / [`CONNECT_DEADLINE`]
//!   (a blackholed route: nothing is refused, nothing comes back).
//!
//! A ping that fails on an established connection (reset, end of stream) only makes the
//! prober connect again at once, and that attempt decides. Everyone else who notices trouble
//! — a request's connection error, the change feed's poll, the PostgreSQL LISTEN or MySQL
//! doorbell connection dropping — only *suspects*: it wakes the prober, which probes at once.
//! So a slow database (statements taking 1–2 s, a saturated pool timing out) never flips the
//! verdict: only the database's own silence beyond [`DEADLINE`] does.
//!
//! Invariants: the verdict changes only in [`Prober::record`]; a [`State::Down`] always says
//! why, in words that name no endpoint, user or address (`/readyz` shows them to anyone).
//! Detection of a silent database takes at most [`PERIOD`] + [`DEADLINE`]; recovery at most
//! [`RETRY`] plus one connection set-up after the database answers again.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// Time between pings while the database answers. With [`DEADLINE`] it bounds detection of a
/// silent database; 10 protocol pings a second cost the database no statement.
pub const PERIOD: Duration = Duration::from_millis(100);
/// Longest a ping may go unanswered before the database counts as gone. Above the 1–1.5 s a
/// slow database or network may take to answer anything, below the 2 s the API promises to
/// say 503 within (with [`PERIOD`]).
pub const DEADLINE: Duration = Duration::from_millis(1700);
/// Longest a new connection may take. A connection set-up is several round trips (TLS,
/// start-up, authentication), so a slow database needs longer than for one ping; it is only
/// tried after a ping failed or while the database is down.
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(5);
/// Time between attempts while the database is down: recovery is noticed this soon.
pub const RETRY: Duration = Duration::from_millis(100);

/// The verdict.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// The last probe was answered (or the store was just opened).
    Up,
    /// The database refused or did not answer; `reason` says how, `since` when.
    Down { reason: Arc<str>, since: Instant },
}

/// What one probe found.
#[derive(Debug)]
pub enum Outcome {
    /// A ping or a connection attempt was answered.
    Answered,
    /// An established connection broke (reset, end of stream): connect again at once and let
    /// that attempt decide — one lost connection is no verdict on the database.
    Lost(String),
    /// A connection attempt failed: the database refused, or cannot be reached.
    Refused(String),
    /// Nothing came back within this long.
    Silent(Duration),
}

/// A handle to the verdict; cheap to clone.
#[derive(Clone)]
pub struct Health {
    shared: Arc<Shared>,
}

struct Shared {
    /// Written only by the prober (and [`Health::up`] for stores without one); read by
    /// everyone. A watch, so datastore calls in flight can wait for the verdict to turn.
    state: watch::Sender<State>,
    /// Wakes the prober before its next period.
    suspect: Notify,
    /// Probes sent (pings and connection attempts), for `/metrics`.
    probes: AtomicU64,
    /// Times the verdict turned to down, for `/metrics`.
    outages: AtomicU64,
}

// === impl Health ===

impl Health {
    /// A verdict that starts as [`State::Up`]: a store is only built after it connected.
    pub fn up() -> Health {
        Health {
            shared: Arc::new(Shared {
                state: watch::Sender::new(State::Up),
                suspect: Notify::new(),
                probes: AtomicU64::new(0),
                outages: AtomicU64::new(0),
            }),
        }
    }

    pub fn is_up(&self) -> bool {
        matches!(*self.shared.state.borrow(), State::Up)
    }

    pub fn state(&self) -> State {
        self.shared.state.borrow().clone()
    }

    /// Why the database counts as down, and for how long, for `/readyz` and 503 answers;
    /// `None` while it is up.
    pub fn down_reason(&self) -> Option<String> {
        match self.state() {
            State::Up => None,
            State::Down { reason, since } => Some(format!(
                "{reason} (down for {:.1} s)",
                since.elapsed().as_secs_f64()
            )),
        }
    }

    /// Something went wrong talking to the database: probe now instead of at the next period.
    /// Never changes the verdict by itself.
    pub fn suspect(&self) {
        self.shared.suspect.notify_one();
    }

    /// Resolves once the verdict is [`State::Down`] (at once if it is), with its reason.
    pub async fn down(&self) -> Arc<str> {
        let mut rx = self.shared.state.subscribe();
        loop {
            if let State::Down { reason, .. } = &*rx.borrow_and_update() {
                return reason.clone();
            }
            if rx.changed().await.is_err() {
                // The sender lives in `shared`, which `self` holds: cannot close.
                std::future::pending::<()>().await;
            }
        }
    }

    pub fn probes(&self) -> u64 {
        self.shared.probes.load(Ordering::Relaxed)
    }

    pub fn outages(&self) -> u64 {
        self.shared.outages.load(Ordering::Relaxed)
    }

    async fn suspected(&self) {
        self.shared.suspect.notified().await
    }
}

/// What the prober talks to: the real database, or a fake in tests.
pub trait Target: Send + 'static {
    type Conn: Send;
    fn connect(&mut self) -> impl Future<Output = Result<Self::Conn, sqlx::Error>> + Send;
    fn ping(conn: &mut Self::Conn) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

/// The prober task: pings, decides, and publishes the verdict. Ends when aborted.
pub struct Prober<T: Target> {
    target: T,
    health: Health,
    /// The prober's own connection; `None` until connected, and after a failed ping.
    conn: Option<T::Conn>,
}

// === impl Prober ===

impl<T: Target> Prober<T> {
    pub fn new(target: T, health: Health) -> Prober<T> {
        Prober {
            target,
            health,
            conn: None,
        }
    }

    pub async fn run(mut self) {
        loop {
            let outcome = self.probe().await;
            let pause = self.record(outcome);
            if pause.is_zero() {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.health.suspected() => {}
            }
        }
    }

    /// One ping on the connection, or one connection attempt when there is none.
    async fn probe(&mut self) -> Outcome {
        self.health.shared.probes.fetch_add(1, Ordering::Relaxed);
        match self.conn.as_mut() {
            None => match tokio::time::timeout(CONNECT_DEADLINE, self.target.connect()).await {
                Ok(Ok(conn)) => {
                    self.conn = Some(conn);
                    Outcome::Answered
                }
                Ok(Err(e)) => Outcome::Refused(super::sqlx_public_reason(&e)),
                Err(_) => Outcome::Silent(CONNECT_DEADLINE),
            },
            Some(conn) => match tokio::time::timeout(DEADLINE, T::ping(conn)).await {
                Ok(Ok(())) => Outcome::Answered,
                Ok(Err(e)) => {
                    self.conn = None;
                    Outcome::Lost(super::sqlx_public_reason(&e))
                }
                Err(_) => {
                    // The connection may still deliver the late answer; it is useless now.
                    self.conn = None;
                    Outcome::Silent(DEADLINE)
                }
            },
        }
    }

    /// Publishes what `outcome` means for the verdict; returns the pause before the next probe.
    fn record(&mut self, outcome: Outcome) -> Duration {
        let state = &self.health.shared.state;
        let down = |reason: String| {
            state.send_if_modified(|s| match s {
                State::Up => {
                    tracing::warn!(%reason, "the datastore is down; answering 503 until it answers again");
                    self.health.shared.outages.fetch_add(1, Ordering::Relaxed);
                    *s = State::Down {
                        reason: reason.into(),
                        since: Instant::now(),
                    };
                    true
                }
                // Keep the first reason and time: they say when the outage began.
                State::Down { .. } => false,
            });
            RETRY
        };
        match outcome {
            Outcome::Answered => {
                state.send_if_modified(|s| match s {
                    State::Up => false,
                    State::Down { since, .. } => {
                        tracing::info!(after = ?since.elapsed(), "the datastore answers again");
                        *s = State::Up;
                        true
                    }
                });
                PERIOD
            }
            Outcome::Lost(reason) => {
                tracing::debug!(%reason, "the datastore probe's connection broke; connecting again");
                Duration::ZERO
            }
            Outcome::Refused(reason) => down(reason),
            Outcome::Silent(after) => down(format!(
                "the database did not answer within {:.1} s",
                after.as_secs_f64()
            )),
        }
    }
}

/// The real database, on a connection of the prober's own.
pub struct Database {
    pub url: String,
}

impl Target for Database {
    type Conn = sqlx::AnyConnection;

    fn connect(&mut self) -> impl Future<Output = Result<Self::Conn, sqlx::Error>> + Send {
        <sqlx::AnyConnection as sqlx::Connection>::connect(&self.url)
    }

    fn ping(conn: &mut Self::Conn) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        sqlx::Connection::ping(conn)
    }
}

/// The database through the pool, for a bound of one connection: each ping borrows a
/// connection for its round trip only, so the pool is never held.
pub struct Pooled {
    pub pool: sqlx::AnyPool,
}

impl Target for Pooled {
    type Conn = sqlx::AnyPool;

    fn connect(&mut self) -> impl Future<Output = Result<Self::Conn, sqlx::Error>> + Send {
        let pool = self.pool.clone();
        async move {
            let mut probe = pool.clone();
            Self::ping(&mut probe).await?;
            Ok(pool)
        }
    }

    fn ping(pool: &mut Self::Conn) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        let pool = pool.clone();
        async move { sqlx::Connection::ping(&mut *pool.acquire().await?).await }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// How the fake database behaves; the test changes it while the prober runs.
    #[derive(Clone, Copy, Debug)]
    enum Mode {
        /// Answers after this long.
        Answer(Duration),
        /// Refuses connections; established connections break.
        Refuse,
        /// Accepts nothing and answers nothing, ever.
        Blackhole,
    }

    #[derive(Clone)]
    struct Fake(Arc<Mutex<Mode>>);

    impl Fake {
        fn set(&self, mode: Mode) {
            *self.0.lock().unwrap() = mode;
        }

        async fn behave(mode: Arc<Mutex<Mode>>) -> Result<(), sqlx::Error> {
            let m = *mode.lock().unwrap();
            match m {
                Mode::Answer(after) => {
                    tokio::time::sleep(after).await;
                    Ok(())
                }
                Mode::Refuse => Err(sqlx::Error::Io(
                    std::io::ErrorKind::ConnectionRefused.into(),
                )),
                Mode::Blackhole => std::future::pending().await,
            }
        }
    }

    impl Target for Fake {
        type Conn = Arc<Mutex<Mode>>;

        fn connect(&mut self) -> impl Future<Output = Result<Self::Conn, sqlx::Error>> + Send {
            let mode = self.0.clone();
            async move { Fake::behave(mode.clone()).await.map(|()| mode) }
        }

        fn ping(conn: &mut Self::Conn) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
            let mode = conn.clone();
            async move {
                if matches!(*mode.lock().unwrap(), Mode::Refuse) {
                    return Err(sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into()));
                }
                Fake::behave(mode).await
            }
        }
    }

    fn start(mode: Mode) -> (Fake, Health, tokio::task::JoinHandle<()>) {
        let fake = Fake(Arc::new(Mutex::new(mode)));
        let health = Health::up();
        let task = tokio::spawn(Prober::new(fake.clone(), health.clone()).run());
        (fake, health, task)
    }

    /// Steps paused time by `step` until `done` holds; returns the time it took.
    async fn until(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
        let start = Instant::now();
        let step = Duration::from_millis(10);
        while start.elapsed() <= limit {
            if done() {
                return Some(start.elapsed());
            }
            tokio::time::sleep(step).await;
        }
        None
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusing_database_is_down_at_once_and_up_within_a_retry_of_returning() {
        let (fake, health, task) = start(Mode::Answer(Duration::from_millis(1)));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(health.is_up());
        fake.set(Mode::Refuse);
        let took = until(Duration::from_secs(1), || !health.is_up()).await;
        assert!(
            took.is_some_and(|t| t <= PERIOD + Duration::from_millis(20)),
            "{took:?}"
        );
        let reason = health.down_reason().unwrap();
        assert!(reason.contains("refused"), "{reason}");
        fake.set(Mode::Answer(Duration::from_millis(1)));
        let back = until(Duration::from_secs(1), || health.is_up()).await;
        assert!(
            back.is_some_and(|t| t <= RETRY + Duration::from_millis(20)),
            "{back:?}"
        );
        assert_eq!(health.outages(), 1);
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_database_is_down_within_period_and_deadline() {
        let (fake, health, task) = start(Mode::Answer(Duration::from_millis(1)));
        tokio::time::sleep(Duration::from_millis(1003)).await;
        fake.set(Mode::Blackhole);
        let took = until(Duration::from_secs(5), || !health.is_up()).await;
        let took = took.expect("a blackholed database was never declared down");
        assert!(
            took <= PERIOD + DEADLINE + Duration::from_millis(20),
            "{took:?}"
        );
        assert!(took >= DEADLINE - PERIOD, "{took:?}");
        assert!(health.down_reason().unwrap().contains("did not answer"));
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_database_does_not_flap() {
        let (fake, health, task) = start(Mode::Answer(Duration::from_millis(1)));
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Every answer takes 1.5 s, and a slow pool keeps suspecting meanwhile.
        fake.set(Mode::Answer(Duration::from_millis(1500)));
        let flapped = until(Duration::from_secs(30), || {
            health.suspect();
            !health.is_up()
        })
        .await;
        assert_eq!(flapped, None, "a slow database was declared down");
        assert_eq!(health.outages(), 0);
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn down_wakes_waiters_with_the_reason() {
        let (fake, health, task) = start(Mode::Answer(Duration::from_millis(1)));
        let waiter = tokio::spawn({
            let health = health.clone();
            async move { health.down().await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished());
        fake.set(Mode::Refuse);
        let reason = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("down() did not resolve")
            .unwrap();
        assert!(reason.contains("refused"), "{reason}");
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_connection_alone_is_no_verdict() {
        // The established connection breaks, but connecting again works: still up.
        struct Flaky;
        impl Target for Flaky {
            type Conn = ();
            async fn connect(&mut self) -> Result<(), sqlx::Error> {
                Ok(())
            }
            async fn ping(_: &mut ()) -> Result<(), sqlx::Error> {
                Err(sqlx::Error::Io(std::io::ErrorKind::UnexpectedEof.into()))
            }
        }
        let health = Health::up();
        let task = tokio::spawn(Prober::new(Flaky, health.clone()).run());
        let flapped = until(Duration::from_secs(5), || !health.is_up()).await;
        assert_eq!(flapped, None);
        assert!(health.probes() > 10);
        task.abort();
    }
}
