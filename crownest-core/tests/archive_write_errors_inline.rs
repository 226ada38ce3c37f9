//! A write that fails while a small archive is extracted (here: `EFBIG` from
//! `RLIMIT_FSIZE`) stops the pass with an I/O error naming the entry and leaves nothing
//! behind, as in `archive_write_errors.rs`; here the archive is small enough (a few
//! entries, well under a batch) that its entries are written on the reading thread at the
//! end of the pass, without the writer thread. The limit applies in a child process
//! (`with_file_size_limit`).
#![allow(clippy::unwrap_used)]

mod archive_common;

use archive_common::*;

const LIMIT: u64 = 64 * 1024;

#[test]
fn a_failing_write_in_a_small_archive_stops_the_pass_and_leaves_nothing() {
    with_file_size_limit(
        "a_failing_write_in_a_small_archive_stops_the_pass_and_leaves_nothing",
        LIMIT,
        || {
            for big_at in 0..3 {
                let mut b = tar::Builder::new(Vec::new());
                for f in 0..3 {
                    let data = if f == big_at {
                        vec![7u8; 100 * 1024]
                    } else {
                        format!("small {f}").into_bytes()
                    };
                    let mut h = tar::Header::new_gnu();
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, format!("d/f{f}"), &data[..]).unwrap();
                }
                let gz = gz(&b.into_inner().unwrap());
                assert_write_failure_leaves_nothing(&gz, &format!("d/f{big_at}"));
            }
        },
    );
}
