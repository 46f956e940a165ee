//! One shard's full-text index: tantivy, in the shard's `search/` directory. It is derived
//! state: the segments are the truth, and an index that is missing, damaged or of another
//! version is removed and rebuilt from them. Events reach it after they are durable, in
//! log order; each commit records how far in the log it has read (its checkpoint), so a
//! restart goes on from there.
//!
//! The core searches it (from glommio's blocking thread); a thread of its own writes it,
//! fed through a queue bounded in bytes. tantivy runs one indexing thread and one merge
//! thread for it besides.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, Occur, PhraseQuery, Query, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, Value, FAST, INDEXED, STORED};
use tantivy::{DocAddress, Index, IndexReader, IndexWriter, ReloadPolicy, Score, TantivyDocument, Term};

use super::text::{analyzer, SearchQuery};
use crate::limits::{SEARCH_COMMIT_COUNT, SEARCH_COMMIT_INTERVAL_MS, SEARCH_WRITER_MEMORY_MIN};

/// The index's layout; a directory written with another is rebuilt.
const VERSION: u32 = 1;
const TOKENIZER: &str = "ringrelay";
/// What a queued document costs beyond its text.
const DOC_OVERHEAD_SIZE: usize = 96;
/// Recency in the ranking: a hit's text score is weighed by 0.5 + 0.5 × 2^(−age / this).
const RECENCY_HALF_LIFE_SECS: f64 = 30.0 * 86_400.0;

/// Where in the shard's log an event is: (segment id, offset). The index has read every
/// event up to its checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogPosition {
    pub segment: u32,
    pub offset: u32,
}

/// An event to index.
pub struct Doc {
    pub id: [u8; 32],
    pub created_at: u64,
    pub text: String,
    pub at: LogPosition,
    /// Whether the index may hold it already (catching up within the checkpoint's
    /// segment, which compaction may have rewritten): it is looked up first.
    pub dedupe: bool,
}

enum Job {
    Add(Doc),
    Delete([u8; 32]),
}

#[derive(Clone, Copy)]
struct Fields {
    id: Field,
    text: Field,
    created_at: Field,
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let id = builder.add_bytes_field("id", INDEXED | STORED);
    let indexing = TextFieldIndexing::default()
        .set_tokenizer(TOKENIZER)
        .set_index_option(IndexRecordOption::WithFreqsAndPositions);
    let text = builder.add_text_field("text", TextOptions::default().set_indexing_options(indexing));
    let created_at = builder.add_u64_field("created_at", FAST);
    (builder.build(), Fields { id, text, created_at })
}

/// What the index's thread and the core share: figures, read at scrape time.
#[derive(Default)]
pub struct SearchFigures {
    /// Bytes of documents queued to the indexer.
    pub queued_bytes: AtomicUsize,
    /// Documents committed (searchable).
    pub indexed: AtomicU64,
    /// Commits or writes that failed (the index lags; a restart rebuilds what it lacks).
    pub failures: AtomicU64,
    /// Documents in the index as of its last commit.
    pub documents: AtomicU64,
    /// The segment of the first document taken since the last commit, plus one (0: none).
    pub pending_segment: AtomicU64,
}

impl SearchFigures {
    /// The segment of the first document not yet committed: a crash now would have the
    /// next start look for it (and what follows) by its place in the log.
    pub fn pending_segment(&self) -> Option<u32> {
        let stored = self.pending_segment.load(Ordering::Relaxed);
        (stored > 0).then(|| (stored - 1) as u32)
    }
}

/// A shard's index: searched through [`Searching`], fed through [`ShardSearch::add`].
pub struct ShardSearch {
    searching: Searching,
    jobs: Option<mpsc::Sender<Job>>,
    pub figures: Arc<SearchFigures>,
    queue_bytes_max: usize,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What a search needs, `Send`: it runs off the core.
#[derive(Clone)]
pub struct Searching {
    reader: IndexReader,
    fields: Fields,
}

impl ShardSearch {
    /// Open the index in `dir` (creating it, or rebuilding it when it cannot be used) and
    /// start its writer; returns it and its checkpoint (`None`: index every event).
    pub fn open(
        dir: &Path,
        memory_bytes: usize,
        queue_bytes_max: usize,
    ) -> anyhow::Result<(ShardSearch, Option<LogPosition>)> {
        let (index, checkpoint) = match open_index(dir) {
            Ok(opened) => opened,
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "the search index cannot be used; rebuilding it from the segments");
                std::fs::remove_dir_all(dir).or_else(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })?;
                open_index(dir)?
            }
        };
        let (_, fields) = schema();
        let options = tantivy::indexer::IndexWriterOptions::builder()
            .memory_budget_per_thread(memory_bytes.max(SEARCH_WRITER_MEMORY_MIN))
            .num_worker_threads(1)
            .num_merge_threads(1)
            .build();
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        let searching = Searching { reader, fields };
        let figures = Arc::new(SearchFigures::default());
        let (jobs, receiver) = mpsc::channel();
        let (ready, started) = mpsc::sync_channel(1);
        let thread = {
            let (searching, figures) = (searching.clone(), figures.clone());
            let name = format!(
                "search-{}",
                dir.parent().and_then(Path::file_name).map_or(String::new(), |n| n.to_string_lossy().into_owned())
            );
            // The writer, and the threads tantivy starts for it (which inherit its CPUs and
            // priority), run on any CPU the process may use, at the lowest priority: a core
            // and its commits go first.
            std::thread::Builder::new().name(name).spawn(move || {
                off_the_cores();
                crate::store::background::at_lowest_priority(|| match index.writer_with_options(options) {
                    Ok(writer) => {
                        let _ = ready.send(Ok(()));
                        write(writer, searching, receiver, &figures);
                    }
                    Err(error) => {
                        let _ = ready.send(Err(error));
                    }
                })
            })?
        };
        started.recv().map_err(|_| anyhow::anyhow!("the search writer thread ended at its start"))??;
        let search = ShardSearch { searching, jobs: Some(jobs), figures, queue_bytes_max, thread: Some(thread) };
        Ok((search, checkpoint))
    }

    /// Whether the indexer's queue has room for more.
    pub fn has_room(&self) -> bool {
        self.figures.queued_bytes.load(Ordering::Relaxed) < self.queue_bytes_max
    }

    /// Queue `doc` for indexing.
    pub fn add(&self, doc: Doc) {
        self.figures.queued_bytes.fetch_add(doc.text.len() + DOC_OVERHEAD_SIZE, Ordering::Relaxed);
        self.send(Job::Add(doc));
    }

    /// Forget event `id` (one the store retired).
    pub fn delete(&self, id: [u8; 32]) {
        self.figures.queued_bytes.fetch_add(DOC_OVERHEAD_SIZE, Ordering::Relaxed);
        self.send(Job::Delete(id));
    }

    fn send(&self, job: Job) {
        if let Some(jobs) = &self.jobs {
            // The thread ends only when this sender is dropped, or after a panic in tantivy.
            if jobs.send(job).is_err() {
                self.figures.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn searching(&self) -> Searching {
        self.searching.clone()
    }
}

impl Drop for ShardSearch {
    /// The writer commits what it holds and stops.
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Let the calling thread run on every CPU the process may (a core's thread that starts it
/// is pinned to one).
fn off_the_cores() {
    // SAFETY: sched_getaffinity of the process's main thread into a zeroed set of its size,
    // then sched_setaffinity of the calling thread (0) to it; a failure leaves the thread
    // where it was.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(libc::getpid(), std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

fn open_index(dir: &Path) -> anyhow::Result<(Index, Option<LogPosition>)> {
    std::fs::create_dir_all(dir)?;
    let (schema, _) = schema();
    let directory = tantivy::directory::MmapDirectory::open(dir)?;
    let index = Index::builder().schema(schema).open_or_create(directory)?;
    index.tokenizers().register(TOKENIZER, analyzer());
    let checkpoint = match index.load_metas()?.payload {
        None => None,
        Some(payload) => {
            Some(parse_checkpoint(&payload).ok_or_else(|| anyhow::anyhow!("unknown checkpoint {payload:?}"))?)
        }
    };
    Ok((index, checkpoint))
}

fn checkpoint_payload(at: LogPosition) -> String {
    format!("ringrelay-search {VERSION} {} {}", at.segment, at.offset)
}

fn parse_checkpoint(payload: &str) -> Option<LogPosition> {
    let mut words = payload.split(' ');
    (words.next()? == "ringrelay-search" && words.next()?.parse::<u32>().ok()? == VERSION).then_some(())?;
    Some(LogPosition { segment: words.next()?.parse().ok()?, offset: words.next()?.parse().ok()? })
}

/// The index's writer thread: documents in, a commit (with the checkpoint) at most every
/// [`SEARCH_COMMIT_INTERVAL_MS`] or [`SEARCH_COMMIT_COUNT`] documents, and once more when
/// the shard lets go of it.
fn write(mut writer: IndexWriter, searching: Searching, jobs: mpsc::Receiver<Job>, figures: &SearchFigures) {
    let interval = Duration::from_millis(SEARCH_COMMIT_INTERVAL_MS);
    let (mut pending, mut added, mut since, mut checkpoint) = (0, 0, None::<Instant>, None);
    let searcher = || searching.reader.searcher();
    loop {
        let job = match since {
            None => jobs.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some(since) => jobs.recv_timeout(interval.saturating_sub(since.elapsed())),
        };
        let ended = match job {
            Ok(Job::Add(doc)) => {
                figures.queued_bytes.fetch_sub(doc.text.len() + DOC_OVERHEAD_SIZE, Ordering::Relaxed);
                let first = u64::from(doc.at.segment) + 1;
                let _ = figures.pending_segment.compare_exchange(0, first, Ordering::Relaxed, Ordering::Relaxed);
                checkpoint = Some(doc.at);
                let id_term = Term::from_field_bytes(searching.fields.id, &doc.id);
                if !(doc.dedupe && searcher().doc_freq(&id_term).unwrap_or(0) > 0) {
                    let mut document = TantivyDocument::default();
                    document.add_bytes(searching.fields.id, &doc.id);
                    document.add_text(searching.fields.text, &doc.text);
                    document.add_u64(searching.fields.created_at, doc.created_at);
                    if writer.add_document(document).is_err() {
                        figures.failures.fetch_add(1, Ordering::Relaxed);
                    }
                    added += 1;
                }
                pending += 1;
                false
            }
            Ok(Job::Delete(id)) => {
                figures.queued_bytes.fetch_sub(DOC_OVERHEAD_SIZE, Ordering::Relaxed);
                writer.delete_term(Term::from_field_bytes(searching.fields.id, &id));
                pending += 1;
                false
            }
            Err(mpsc::RecvTimeoutError::Timeout) => false,
            Err(mpsc::RecvTimeoutError::Disconnected) => true,
        };
        since = since.or_else(|| (pending > 0).then(Instant::now));
        let due = since.is_some_and(|since| since.elapsed() >= interval) || pending >= SEARCH_COMMIT_COUNT;
        if pending > 0 && (due || ended) {
            match commit(&mut writer, checkpoint) {
                Ok(()) => {
                    figures.pending_segment.store(0, Ordering::Relaxed);
                    figures.indexed.fetch_add(added, Ordering::Relaxed);
                    let _ = searching.reader.reload();
                    figures.documents.store(searching.doc_count(), Ordering::Relaxed);
                }
                Err(error) => {
                    figures.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, "a search index commit failed; it is tried again with the next");
                }
            }
            (pending, added, since) = (0, 0, None);
        }
        if ended {
            let _ = writer.wait_merging_threads();
            return;
        }
    }
}

fn commit(writer: &mut IndexWriter, checkpoint: Option<LogPosition>) -> tantivy::Result<()> {
    let mut prepared = writer.prepare_commit()?;
    if let Some(at) = checkpoint {
        prepared.set_payload(&checkpoint_payload(at));
    }
    prepared.commit().map(|_| ())
}

impl Searching {
    /// The `top` best events for `query`, best first: (score, id). The text score (BM25,
    /// with [`FixedStatistics`]) is weighed by recency, 0.5 + 0.5 × 2^(−age / 30 days).
    pub fn search(&self, query: &SearchQuery, top: usize, now: u64) -> tantivy::Result<Vec<(Score, [u8; 32])>> {
        let text = self.fields.text;
        let groups: Vec<(Occur, Box<dyn Query>)> = query
            .groups
            .iter()
            .map(|group| {
                let terms: Vec<Term> = group.iter().map(|term| Term::from_field_text(text, term)).collect();
                let query: Box<dyn Query> = match <[Term; 1]>::try_from(terms) {
                    Ok([term]) => Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs)),
                    Err(terms) => Box::new(PhraseQuery::new(terms)),
                };
                (Occur::Must, query)
            })
            .collect();
        let query = BooleanQuery::new(groups);
        let now = now as f64;
        let collector = TopDocs::with_limit(top.max(1)).tweak_score(move |segment: &tantivy::SegmentReader| {
            let created_at = segment.fast_fields().u64("created_at").map(|column| column.first_or_default_col(0));
            move |doc: tantivy::DocId, score: Score| {
                let age = created_at.as_ref().map_or(0.0, |column| (now - column.get_val(doc) as f64).max(0.0));
                score * (0.5 + 0.5 * (-age / RECENCY_HALF_LIFE_SECS).exp2()) as Score
            }
        });
        let searcher = self.reader.searcher();
        let hits: Vec<(Score, DocAddress)> =
            searcher.search_with_statistics_provider(&query, &collector, &FixedStatistics)?;
        let mut found = Vec::with_capacity(hits.len());
        for (score, address) in hits {
            let document: TantivyDocument = searcher.doc(address)?;
            let id = document
                .get_first(self.fields.id)
                .and_then(|value| value.as_bytes())
                .and_then(|b| <[u8; 32]>::try_from(b).ok());
            found.extend(id.map(|id| (score, id)));
        }
        Ok(found)
    }

    /// Documents in the index as last committed (dead ones not yet merged away included).
    pub fn doc_count(&self) -> u64 {
        self.reader.searcher().num_docs()
    }
}

/// The collection statistics BM25 is computed with: the same for every shard, so that the
/// scores of hits from different shards and cores compare (each shard's own would weigh
/// the same note differently by what else that shard holds). Every term weighs the same
/// (a search needs all its terms anyway), and a note's length is measured against
/// [`TYPICAL_NOTE_TERMS`].
struct FixedStatistics;

/// The length, in terms, against which BM25 measures a note's.
const TYPICAL_NOTE_TERMS: u64 = 32;
const NOMINAL_DOCS: u64 = 1_000_000;

impl tantivy::query::Bm25StatisticsProvider for FixedStatistics {
    fn total_num_tokens(&self, _field: Field) -> tantivy::Result<u64> {
        Ok(NOMINAL_DOCS * TYPICAL_NOTE_TERMS)
    }
    fn total_num_docs(&self) -> tantivy::Result<u64> {
        Ok(NOMINAL_DOCS)
    }
    fn doc_freq(&self, _term: &Term) -> tantivy::Result<u64> {
        Ok(NOMINAL_DOCS / 100)
    }
}

/// The search index directory of the shard whose directory is `shard_dir`.
pub fn dir_of(shard_dir: &Path) -> PathBuf {
    shard_dir.join("search")
}

/// Remove a shard's search index, for a tool that rewrites the shard's segments (its
/// records move to new places the index's checkpoint does not know): the relay rebuilds it
/// at its next start.
pub fn forget(shard_dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir_of(shard_dir)) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(n: u8, created_at: u64, text: &str) -> Doc {
        Doc {
            id: [n; 32],
            created_at,
            text: text.to_owned(),
            at: LogPosition { segment: 1, offset: u32::from(n) },
            dedupe: false,
        }
    }

    fn ids(found: &[(Score, [u8; 32])]) -> Vec<u8> {
        found.iter().map(|(_, id)| id[0]).collect()
    }

    #[test]
    fn words_phrases_ranking_deletion_and_the_checkpoint_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("search");
        let now = 1_800_000_000;
        {
            let (search, checkpoint) = ShardSearch::open(&path, 0, 1 << 20).unwrap();
            assert_eq!(checkpoint, None);
            search.add(doc(1, now, "the relay operators met"));
            search.add(doc(2, now, "operators of the relay, relay, relay"));
            search.add(doc(3, now - 365 * 86_400, "relay operators from last year"));
            search.add(doc(4, now, "nothing to see"));
            search.add(doc(5, now, "東京タワーの夜"));
        }
        let (search, checkpoint) = ShardSearch::open(&path, 0, 1 << 20).unwrap();
        assert_eq!(checkpoint, Some(LogPosition { segment: 1, offset: 5 }));
        let searching = search.searching();
        let find = |text: &str| searching.search(&SearchQuery::parse(text).unwrap(), 10, now).unwrap();
        // Both words: three notes; the one saying "relay" most ranks first, last year's last.
        assert_eq!(ids(&find("relay operators")), [2, 1, 3]);
        assert_eq!(ids(&find("\"relay operators\"")), [1, 3]);
        assert_eq!(ids(&find("RELAY \"operators met\"")), [1]);
        assert_eq!(ids(&find("タワー")), [5]);
        assert!(find("absent").is_empty());
        // A document seen again within the checkpoint's segment is not indexed twice.
        search.add(Doc { dedupe: true, ..doc(4, now, "nothing to see") });
        search.delete([1; 32]);
        drop(search);
        let (search, _) = ShardSearch::open(&path, 0, 1 << 20).unwrap();
        let searching = search.searching();
        assert_eq!(searching.doc_count(), 4);
        assert_eq!(ids(&searching.search(&SearchQuery::parse("relay").unwrap(), 10, now).unwrap()), [2, 3]);
    }

    #[test]
    fn scores_from_shards_that_hold_different_notes_compare() {
        let dir = tempfile::tempdir().unwrap();
        let now = 1_800_000_000;
        let open = |name: &str| ShardSearch::open(&dir.path().join(name), 0, 1 << 20).unwrap().0;
        let (crowded, alone) = (open("a"), open("b"));
        // The better note sits among many that share its words; the weaker one alone.
        crowded.add(doc(1, now, "wombats dig burrows, wombats dig all night"));
        for n in 2..120 {
            crowded.add(doc(n, now, &format!("wombats dig number {n} with a long tail of other words")));
        }
        alone.add(doc(200, now, "wombats never dig on sundays"));
        drop((crowded, alone));
        let query = SearchQuery::parse("wombats dig").unwrap();
        let best = |name: &str| open(name).searching().search(&query, 1, now).unwrap()[0].0;
        assert!(best("a") > best("b"), "{} vs {}", best("a"), best("b"));
    }

    #[test]
    fn an_index_that_cannot_be_read_is_rebuilt_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("search");
        drop(ShardSearch::open(&path, 0, 1 << 20).unwrap());
        std::fs::write(path.join("meta.json"), b"{ not json").unwrap();
        let (search, checkpoint) = ShardSearch::open(&path, 0, 1 << 20).unwrap();
        assert_eq!((checkpoint, search.searching().doc_count()), (None, 0));
    }
}
