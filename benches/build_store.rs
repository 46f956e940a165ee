//! FOR BENCHMARKS ONLY: build a data directory of N realistic events without signing them
//! (`ringrelay::tools::bench_store`: real ids, random signatures; never serve it to clients).
//!
//! cargo bench --bench build_store -- EVENTS DATA_DIR [SHARDS]

use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|arg| !arg.starts_with("--")).collect();
    let (Some(count), Some(dir)) = (args.first(), args.get(1)) else {
        eprintln!("usage: cargo bench --bench build_store -- EVENTS DATA_DIR [SHARDS]");
        std::process::exit(2);
    };
    let count: u64 = count.parse().expect("EVENTS is a number");
    let shards: u16 = args.get(2).map_or(2, |n| n.parse().expect("SHARDS is a number"));
    let options = ringrelay::tools::StoreOptions {
        data_dir: PathBuf::from(dir),
        key_file: None,
        segment_size: ringrelay::limits::SEGMENT_SIZE_DEFAULT,
    };
    let started = Instant::now();
    ringrelay::tools::bench_store::build(&options, shards, count, |written| eprintln!("{written} events written"))
        .expect("the store is built");
    println!("{count} events in {dir} ({shards} shards) in {:.1} s", started.elapsed().as_secs_f64());
}
