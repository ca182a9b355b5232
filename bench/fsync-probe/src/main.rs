//! fsync-probe: what one LMDB commit costs on the disk holding DIR.
//!
//! Times N rounds (default 200) of: pwrite 4 KiB at offset 0 + fdatasync, then
//! pwrite 4 KiB at offset 4096 + fdatasync (data pages, then the meta page:
//! the two device flushes of one default-flags LMDB commit), in a temporary
//! file in DIR, and prints the median and p99 per round; then as many single
//! flushes (pwrite 4 KiB + fdatasync: the device's own flush latency, what
//! one batch costs at one flush per batch) and their median and p99.
//!
//! Usage: fsync-probe DIR [ROUNDS]

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::time::Instant;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| ".".into());
    let rounds: usize = args.next().map_or(200, |r| r.parse().expect("ROUNDS is a number"));
    let path = std::path::Path::new(&dir).join(format!(".fsync-probe-{}", std::process::id()));
    let file = File::options().create_new(true).read(true).write(true).open(&path)?;
    let page = [0x5au8; 4096];
    // Allocate both pages first so the rounds measure overwrites, as LMDB does.
    file.write_all_at(&page, 0)?;
    file.write_all_at(&page, 4096)?;
    file.sync_all()?;
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        file.write_all_at(&page, 0)?;
        file.sync_data()?;
        file.write_all_at(&page, 4096)?;
        file.sync_data()?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let mut single = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        file.write_all_at(&page, 0)?;
        file.sync_data()?;
        single.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(file);
    fs::remove_file(&path)?;
    let (pair, one) = (quantiles(times), quantiles(single));
    println!(
        "fsync-probe: dir={dir} rounds={rounds} median_us={:.0} p99_us={:.0} max_us={:.0} (one round = 2 x (pwrite 4 KiB + fdatasync)); one flush: median_us={:.0} p99_us={:.0}",
        pair.0, pair.1, pair.2, one.0, one.1
    );
    Ok(())
}

/// Median, p99 and maximum of `times`.
fn quantiles(mut times: Vec<f64>) -> (f64, f64, f64) {
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1];
    (at(0.5), at(0.99), times[times.len() - 1])
}
