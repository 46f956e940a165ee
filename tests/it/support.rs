//! Shared helpers: deterministic keys, events signed by the `nostr` crate, and glommio.

use std::future::Future;
use std::pin::Pin;

use nostr::{EventBuilder, Keys, Kind, SecretKey, Tag, Timestamp};
use ringrelay::event::VerifiedEvent;
use ringrelay::limits::EventLimits;

/// The `index`-th test author, the same in every run.
pub fn keys(index: u32) -> Keys {
    let mut secret = [0x11u8; 32];
    secret[28..].copy_from_slice(&(index + 1).to_be_bytes());
    Keys::new(SecretKey::from_slice(&secret).expect("valid secret key"))
}

/// A signed event as wire JSON.
pub fn signed(keys: &Keys, kind: u16, created_at: u64, tags: &[&[&str]], content: &str) -> String {
    let tags: Vec<Tag> = tags.iter().map(|t| Tag::parse(t.iter().copied()).expect("valid tag")).collect();
    EventBuilder::new(Kind::from(kind), content)
        .tags(tags)
        .custom_created_at(Timestamp::from(created_at))
        .sign_with_keys(keys)
        .expect("signing works")
        .as_json_string()
}

trait AsJsonString {
    fn as_json_string(&self) -> String;
}

impl AsJsonString for nostr::Event {
    fn as_json_string(&self) -> String {
        use nostr::JsonUtil;
        self.as_json()
    }
}

pub fn verified(json: &str) -> VerifiedEvent {
    VerifiedEvent::from_json(json.as_bytes(), &EventLimits::default()).unwrap_or_else(|e| panic!("{e}: {json}"))
}

/// Run a future on a fresh glommio executor and return its output.
pub fn run_glommio<T: Send + 'static>(work: impl FnOnce() -> Pin<Box<dyn Future<Output = T>>> + Send + 'static) -> T {
    ringrelay::tools::run_local("test", work).expect("glommio executor runs")
}

pub fn now() -> u64 {
    ringrelay::now_unix()
}

/// Copy a directory tree (a data directory) file by file.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Where the pinned Python packages of `dir`'s `requirements.txt` are installed (`pip install
/// --target` into the target directory under `name`), once per requirements file.
pub fn python_packages(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let site = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let requirements = std::fs::read(dir.join("requirements.txt")).unwrap();
    let marker = site.join(".ringrelay-installed-requirements");
    if std::fs::read(&marker).ok().as_deref() != Some(requirements.as_slice()) {
        let status = std::process::Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--root-user-action=ignore"])
            .args(["--upgrade", "--target"])
            .arg(&site)
            .arg("-r")
            .arg(dir.join("requirements.txt"))
            // Into a directory of its own, so a Debian system Python's PEP 668 guard does not apply.
            .env("PIP_BREAK_SYSTEM_PACKAGES", "1")
            .status()
            .expect("this test needs python3 with pip, as .ci/run installs");
        assert!(status.success(), "pip could not install {} into {}", dir.display(), site.display());
        std::fs::write(&marker, &requirements).unwrap();
    }
    site
}
