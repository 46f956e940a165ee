//! One NIP-77 sync against a relay, from the initiating side: the local set the filter
//! selects reconciled with the relay's (negentropy), then what the relay has and we lack
//! fetched by id (down) and what we have and it lacks published (up). The local side is a
//! [`Local`]: a stopped data directory (`ringrelay sync`) or the running relay (peering).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use negentropy::{Id, Negentropy, NegentropyStorageVector};

use super::client::{Client, ClientError, Traffic};
use super::wire::{self, RelayMessage};

/// Which way events move.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Fetch what the relay has and we lack.
    Down,
    /// Publish what we have and the relay lacks.
    Up,
    Both,
}

impl Direction {
    pub fn down(self) -> bool {
        matches!(self, Direction::Down | Direction::Both)
    }

    pub fn up(self) -> bool {
        matches!(self, Direction::Up | Direction::Both)
    }
}

/// How one sync runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The NIP-01 filter (JSON text) both sets are drawn with.
    pub filter: String,
    pub direction: Direction,
    /// Our negentropy messages' largest size (0: none; else at least 4096).
    pub frame_size: u64,
    /// Ids asked for in one REQ.
    pub fetch_batch: usize,
    /// REQs for ids open at once.
    pub fetch_window: usize,
    /// EVENTs sent and not yet answered with their OK.
    pub publish_window: usize,
    /// How long the relay may take to answer anything before the sync gives up.
    pub answer_deadline: Duration,
}

impl Plan {
    pub fn new(filter: String, direction: Direction) -> Plan {
        Plan {
            filter,
            direction,
            // Hex doubles it: 120 KB messages fit strfry's default 128 KiB payload limit and
            // ringrelay's 260 KiB (`limits.message_size_max`).
            frame_size: 60_000,
            fetch_batch: 500,
            fetch_window: 4,
            publish_window: 256,
            answer_deadline: Duration::from_secs(30),
        }
    }
}

/// The local side of a sync.
#[allow(async_fn_in_trait)]
pub trait Local {
    /// `(created_at, id)` of every local event the filter selects.
    async fn items(&mut self, filter: &crate::filter::Filter) -> anyhow::Result<Vec<(u64, [u8; 32])>>;
    /// Store events fetched from the relay (each checked as any other event), counting
    /// each outcome into `summary`.
    async fn store(&mut self, events: Vec<String>, summary: &mut Summary) -> anyhow::Result<()>;
    /// The JSON of those of `ids` still held.
    async fn events(&mut self, ids: &[[u8; 32]]) -> anyhow::Result<Vec<String>>;
}

/// What a sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Local events the filter selected.
    pub local: u64,
    /// Events only we hold.
    pub have: u64,
    /// Events only the relay holds.
    pub need: u64,
    /// NEG-MSG exchanges.
    pub rounds: u32,
    /// NEG-OPENs: more than one when the relay found the whole set too large and it was
    /// split by date.
    pub windows: u32,
    pub fetched: u64,
    pub stored: u64,
    pub duplicate: u64,
    /// Fetched events not stored, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Events the relay took (OK true, `duplicate:` included).
    pub published: u64,
    /// Events the relay refused, by OK prefix.
    pub refused: BTreeMap<String, u64>,
    pub traffic: Traffic,
    pub reconcile_ms: u64,
    pub transfer_ms: u64,
}

impl Summary {
    pub fn reject(&mut self, reason: &str) {
        *self.rejected.entry(reason.to_owned()).or_default() += 1;
    }

    fn refuse(&mut self, prefix: &str) {
        *self.refused.entry(prefix.to_owned()).or_default() += 1;
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} local, {} only here, {} only there ({} rounds in {} part{}, {} ms); fetched {}: {} stored, {} \
             duplicate, {} rejected; published {}, {} refused ({} ms); {} bytes sent, {} received",
            self.local,
            self.have,
            self.need,
            self.rounds,
            self.windows,
            if self.windows == 1 { "" } else { "s" },
            self.reconcile_ms,
            self.fetched,
            self.stored,
            self.duplicate,
            self.rejected.values().sum::<u64>(),
            self.published,
            self.refused.values().sum::<u64>(),
            self.transfer_ms,
            self.traffic.bytes_sent,
            self.traffic.bytes_received,
        )?;
        for (reason, count) in self.rejected.iter().chain(&self.refused) {
            write!(f, "\n  {count:>10}  {reason}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the relay refused: {0}")]
    Refused(String),
    #[error("negentropy: {0}")]
    Negentropy(String),
    #[error("{0}")]
    Local(#[from] anyhow::Error),
}

/// Sorted and sealed for negentropy (a sort of the whole set: run it off a serving core).
pub fn sealed_set(items: Vec<(u64, [u8; 32])>) -> Result<NegentropyStorageVector, negentropy::Error> {
    let mut storage = NegentropyStorageVector::with_capacity(items.len());
    for (created_at, id) in items {
        storage.insert(created_at, Id::from_byte_array(id))?;
    }
    storage.seal()?;
    Ok(storage)
}

/// Run one sync over `client`; `progress` sees the summary after every step.
pub async fn sync(
    client: &mut Client,
    plan: &Plan,
    local: &mut impl Local,
    progress: &mut dyn FnMut(&Summary),
) -> Result<Summary, SyncError> {
    let filter = crate::filter::Filter::from_text(&plan.filter)
        .map_err(|error| SyncError::Local(anyhow::anyhow!("--filter: {}", error.reason())))?;
    let mut summary = Summary::default();
    let started = Instant::now();
    client.authenticate(CHALLENGE_WAIT, plan.answer_deadline).await?;
    let items = local.items(&filter).await?;
    summary.local = items.len() as u64;
    let (have, need) = match reconcile_in_windows(client, plan, &filter, &items, &mut summary).await {
        Err(SyncError::Refused(message))
            if wire::prefix(&message) == "auth-required" && authenticated(client, plan).await? =>
        {
            reconcile_in_windows(client, plan, &filter, &items, &mut summary).await?
        }
        other => other?,
    };
    summary.have = have.len() as u64;
    summary.need = need.len() as u64;
    summary.reconcile_ms = started.elapsed().as_millis() as u64;
    summary.traffic = client.traffic;
    progress(&summary);
    let started = Instant::now();
    if plan.direction.down() {
        fetch(client, plan, &need, local, &mut summary, progress).await?;
    }
    if plan.direction.up() {
        publish(client, plan, &have, local, &mut summary, progress).await?;
    }
    summary.transfer_ms = started.elapsed().as_millis() as u64;
    summary.traffic = client.traffic;
    Ok(summary)
}

/// After an `auth-required:` answer: authenticated now (the challenge may have come with
/// the answer), so that the request is worth sending again?
async fn authenticated(client: &mut Client, plan: &Plan) -> Result<bool, SyncError> {
    Ok(client.authenticate(CHALLENGE_WAIT, plan.answer_deadline).await?)
}

/// How long a client with a key waits for a challenge before it asks unauthenticated (a
/// relay that sends none on connect sends it with its first `auth-required:` answer).
const CHALLENGE_WAIT: Duration = Duration::from_secs(2);

type Ids = Vec<[u8; 32]>;

/// NEG-OPEN, then NEG-MSG until our side has nothing more to say.
/// Windows of `created_at` a sync is split into at most, when the relay finds the set too
/// large for one sync.
const WINDOWS_MAX: usize = 256;

/// Reconcile the filter's set, split into `created_at` windows while the relay refuses a
/// window as too large (`blocked:` over its item limit: ringrelay's `negentropy.items_max`,
/// strfry's 1M): each part is its own NEG-OPEN, with the local items dated inside it.
async fn reconcile_in_windows(
    client: &mut Client,
    plan: &Plan,
    filter: &crate::filter::Filter,
    items: &[(u64, [u8; 32])],
    summary: &mut Summary,
) -> Result<(Ids, Ids), SyncError> {
    let mut windows = vec![Window { since: filter.since, until: filter.until }];
    let (mut have, mut need) = (Vec::new(), Vec::new());
    let mut opened = 0;
    while let Some(window) = windows.pop() {
        opened += 1;
        let part: Vec<(u64, [u8; 32])> = items.iter().filter(|(at, _)| window.holds(*at)).copied().collect();
        let middle = window.middle(&part);
        let storage = glommio::executor().spawn_blocking(move || sealed_set(part)).await;
        let storage = storage.map_err(|error| SyncError::Negentropy(error.to_string()))?;
        match reconcile(client, plan, &window.filter(&plan.filter), storage, summary).await {
            Ok((part_have, part_need)) => {
                have.extend(part_have);
                need.extend(part_need);
            }
            Err(SyncError::Refused(message)) if too_large(&message) && opened + windows.len() < WINDOWS_MAX => {
                let Some(middle) = middle else { return Err(SyncError::Refused(message)) };
                tracing::debug!(?window, middle, "the relay finds the window too large; split");
                windows.push(Window { since: Some(middle + 1), until: window.until });
                windows.push(Window { since: window.since, until: Some(middle) });
            }
            Err(error) => return Err(error),
        }
    }
    summary.windows = opened as u32;
    Ok((have, need))
}

/// A NEG-ERR that says the set is over the relay's item limit (ringrelay: "matches more
/// than"; strfry: "too many query results").
fn too_large(message: &str) -> bool {
    wire::prefix(message) == "blocked"
        && ["matches more than", "too many query results", "narrow"].iter().any(|words| message.contains(words))
}

/// Part of a sync's range of `created_at` (inclusive; `None`: open).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    since: Option<u64>,
    until: Option<u64>,
}

impl Window {
    fn holds(&self, created_at: u64) -> bool {
        self.since.is_none_or(|since| created_at >= since) && self.until.is_none_or(|until| created_at <= until)
    }

    /// Where to split: the median date of the local events in it when it holds a few, else
    /// halfway in time (an open end counts as now); `None` when it cannot be split.
    fn middle(&self, part: &[(u64, [u8; 32])]) -> Option<u64> {
        let since = self.since.unwrap_or(0);
        let until = self.until.unwrap_or_else(crate::now_unix).max(since);
        let mut dates: Vec<u64> = part.iter().map(|(at, _)| *at).collect();
        let median = (dates.len() >= 2).then(|| *dates.select_nth_unstable(part.len() / 2).1);
        let middle = median.filter(|&m| since <= m && m < until).unwrap_or(since + (until - since) / 2);
        (since < until || self.until.is_none()).then_some(middle)
    }

    /// The plan's filter (JSON text) with this window's bounds.
    fn filter(&self, filter: &str) -> String {
        let mut value: serde_json::Value = serde_json::from_str(filter).unwrap_or_else(|_| serde_json::json!({}));
        if let Some(object) = value.as_object_mut() {
            for (key, bound) in [("since", self.since), ("until", self.until)] {
                match bound {
                    Some(bound) => object.insert(key.into(), bound.into()),
                    None => object.remove(key),
                };
            }
        }
        value.to_string()
    }
}

async fn reconcile(
    client: &mut Client,
    plan: &Plan,
    filter: &str,
    storage: NegentropyStorageVector,
    summary: &mut Summary,
) -> Result<(Ids, Ids), SyncError> {
    let negentropy_error = |error: negentropy::Error| SyncError::Negentropy(error.to_string());
    let mut state = Negentropy::owned(storage, plan.frame_size).map_err(negentropy_error)?;
    let sub = "sync";
    client.send(wire::neg_open(sub, filter, &state.initiate().map_err(negentropy_error)?)).await?;
    let (mut have, mut need) = (Vec::new(), Vec::new());
    loop {
        let answer = match client.recv(plan.answer_deadline, "a NEG-MSG").await? {
            RelayMessage::NegMsg { sub: answered, message } if answered == sub => message,
            RelayMessage::NegErr { sub: answered, message } if answered == sub => {
                return Err(SyncError::Refused(message))
            }
            RelayMessage::Notice(notice) => return Err(SyncError::Refused(format!("NOTICE: {notice}"))),
            other => {
                tracing::debug!(?other, "ignored during a sync");
                continue;
            }
        };
        summary.rounds += 1;
        let answer = crate::hex::decode_lower_vec(answer.as_bytes())
            .ok_or_else(|| SyncError::Negentropy("a NEG-MSG that is not lowercase hex".into()))?;
        let next = state.reconcile_with_ids(&answer, &mut have, &mut need).map_err(negentropy_error)?;
        match next {
            Some(next) => client.send(wire::neg_msg(sub, &next)).await?,
            None => {
                client.send(wire::neg_close(sub)).await?;
                let bytes = |ids: Vec<Id>| ids.into_iter().map(|id| id.to_bytes()).collect();
                return Ok((bytes(have), bytes(need)));
            }
        }
    }
}

/// A REQ for ids in flight: the events come so far, the ids asked, how many times it was
/// asked again (after our AUTH, after `rate-limited:`).
type Asked<'a> = (Vec<String>, &'a [[u8; 32]], u32);

/// Times an answer refused `rate-limited:` is asked again, after a pause that doubles.
const RETRIES_MAX: u32 = 8;

/// REQs by id, `fetch_window` open at once; each batch stored once its EOSE comes.
async fn fetch(
    client: &mut Client,
    plan: &Plan,
    need: &[[u8; 32]],
    local: &mut impl Local,
    summary: &mut Summary,
    progress: &mut dyn FnMut(&Summary),
) -> Result<(), SyncError> {
    let mut batches = need.chunks(plan.fetch_batch.max(1)).enumerate().peekable();
    let mut open: HashMap<String, Asked> = HashMap::new();
    loop {
        while open.len() < plan.fetch_window.max(1) {
            let Some((n, ids)) = batches.next() else { break };
            let sub = format!("fetch-{n}");
            client.send(wire::req_ids(&sub, ids)).await?;
            open.insert(sub, (Vec::new(), ids, 0));
        }
        if open.is_empty() {
            return Ok(());
        }
        match client.recv(plan.answer_deadline, "the events asked for").await? {
            RelayMessage::Event { sub, event } => {
                if let Some((events, _, _)) = open.get_mut(&sub) {
                    events.push(event);
                }
            }
            RelayMessage::Eose { sub } => {
                if let Some((events, _, _)) = open.remove(&sub) {
                    client.send(wire::close(&sub)).await?;
                    summary.fetched += events.len() as u64;
                    local.store(events, summary).await?;
                    summary.traffic = client.traffic;
                    progress(summary);
                }
            }
            RelayMessage::Closed { sub, message } => {
                let Some((_, ids, tries)) = open.remove(&sub) else { continue };
                let again = match wire::prefix(&message) {
                    "auth-required" => tries == 0 && authenticated(client, plan).await?,
                    "rate-limited" if tries < RETRIES_MAX => {
                        glommio::timer::sleep(Duration::from_millis(100 << tries)).await;
                        true
                    }
                    _ => false,
                };
                if !again {
                    return Err(SyncError::Refused(format!("CLOSED: {message}")));
                }
                client.send(wire::req_ids(&sub, ids)).await?;
                open.insert(sub, (Vec::new(), ids, tries + 1));
            }
            RelayMessage::Notice(notice) => tracing::info!(url = %client.url(), notice, "relay notice"),
            _ => {}
        }
    }
}

/// EVENTs, `publish_window` unanswered at most; `rate-limited:` ones are sent again after
/// a pause, `auth-required:` ones once after our AUTH is taken.
async fn publish(
    client: &mut Client,
    plan: &Plan,
    have: &[[u8; 32]],
    local: &mut impl Local,
    summary: &mut Summary,
    progress: &mut dyn FnMut(&Summary),
) -> Result<(), SyncError> {
    let mut chunks = have.chunks(plan.publish_window.max(1));
    let mut queued: VecDeque<(String, u32)> = VecDeque::new();
    let mut unanswered: HashMap<String, (String, u32)> = HashMap::new();
    let mut pause = Duration::from_millis(100);
    loop {
        if queued.is_empty() {
            if let Some(ids) = chunks.next() {
                queued.extend(local.events(ids).await?.into_iter().map(|event| (event, 0)));
            }
        }
        while unanswered.len() < plan.publish_window.max(1) {
            let Some((event, tries)) = queued.pop_front() else { break };
            let Some(id) = event_id(&event) else { continue };
            client.feed(wire::event(&event)).await?;
            unanswered.insert(id, (event, tries));
        }
        if unanswered.is_empty() && queued.is_empty() {
            return Ok(());
        }
        client.flush().await?;
        let RelayMessage::Ok { id, accepted, message } = client.recv(plan.answer_deadline, "OKs").await? else {
            continue;
        };
        let Some((event, tries)) = unanswered.remove(&id) else { continue };
        let prefix = wire::prefix(&message);
        if accepted {
            summary.published += 1;
            pause = Duration::from_millis(100);
        } else if (prefix == "rate-limited" || (prefix == "auth-required" && authenticated(client, plan).await?))
            && tries < RETRIES_MAX
        {
            if prefix == "rate-limited" {
                glommio::timer::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            queued.push_back((event, tries + 1));
        } else {
            summary.refuse(prefix);
        }
        if (summary.published + summary.refused.values().sum::<u64>()).is_multiple_of(256) {
            summary.traffic = client.traffic;
            progress(summary);
        }
    }
}

/// The `id` field of an event's JSON, unchecked (the relay checks it).
pub fn event_id(event: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id<'a> {
        #[serde(borrow)]
        id: std::borrow::Cow<'a, str>,
    }
    serde_json::from_str::<Id>(event).ok().map(|found| found.id.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our messages, hex-encoded in a NEG-MSG, fit what relays accept by default: strfry's
    /// 128 KiB payload limit and ringrelay's own `limits.message_size_max`.
    #[test]
    fn a_sync_message_fits_the_relays_default_message_size() {
        let plan = Plan::new("{}".into(), Direction::Both);
        let largest_frame = 2 * plan.frame_size as usize + 100;
        assert!(largest_frame <= 128 * 1024);
        assert!(largest_frame <= crate::config::RelayLimits::default().message_size_max);
    }

    #[test]
    fn a_sealed_set_is_sorted_oldest_first() {
        let storage = sealed_set(vec![(2, [2; 32]), (1, [1; 32]), (3, [3; 32])]).expect("seals");
        use negentropy::NegentropyStorageBase;
        assert_eq!(storage.size().expect("sealed"), 3);
        assert_eq!(storage.get_item(0).expect("an item").expect("first").timestamp, 1);
    }

    #[test]
    fn a_window_holds_its_dates_splits_at_the_local_median_and_bounds_the_filter() {
        let open = Window { since: None, until: None };
        assert!(open.holds(0) && open.holds(u64::MAX));
        let window = Window { since: Some(100), until: Some(200) };
        assert!(window.holds(100) && window.holds(200) && !window.holds(99) && !window.holds(201));
        let part: Vec<(u64, [u8; 32])> = [110, 120, 130, 190].iter().map(|&at| (at, [0; 32])).collect();
        assert_eq!(window.middle(&part), Some(130));
        assert_eq!(window.middle(&[]), Some(150), "halfway when nothing local says better");
        assert_eq!(Window { since: Some(7), until: Some(7) }.middle(&[]), None, "one second is not split");
        let bounded: serde_json::Value = serde_json::from_str(&window.filter(r#"{"kinds":[1],"since":5}"#)).unwrap();
        assert_eq!(bounded, serde_json::json!({"kinds": [1], "since": 100, "until": 200}));
        let reopened: serde_json::Value = serde_json::from_str(&open.filter(r#"{"since":5,"until":9}"#)).unwrap();
        assert_eq!(reopened, serde_json::json!({}));
    }

    #[test]
    fn only_a_set_over_the_relays_limit_is_split() {
        assert!(too_large("blocked: this filter matches more than 500000 events; narrow it"));
        assert!(too_large("blocked: too many query results"));
        assert!(!too_large("blocked: NIP-77 sync is turned off on this relay"));
        assert!(!too_large("blocked: the relay holds too many syncs now; try again later"));
        assert!(!too_large("error: matches more than"));
    }

    #[test]
    fn an_event_id_is_read_without_checking_the_rest() {
        assert_eq!(event_id(r#"{"id":"ab","kind":1}"#).as_deref(), Some("ab"));
        assert_eq!(event_id(r#"{"kind":1}"#), None);
        assert_eq!(event_id("not json"), None);
    }
}
