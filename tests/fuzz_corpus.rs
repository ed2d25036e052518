//! Replays the checked-in fuzz corpus through the fuzz targets' checks, so CI covers it without
//! a nightly toolchain.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        check(&data);
        n += 1;
    }
    assert!(n >= 40, "corpus of {target} has only {n} inputs");
}

#[test]
fn decode_corpus() {
    replay("decode", |d| {
        let _ = dragonlock::resp::fuzzing::decode_whole(d);
    });
}

#[test]
fn split_corpus() {
    replay("split", dragonlock::resp::fuzzing::split_agrees);
}

#[test]
fn roundtrip_corpus() {
    replay("roundtrip", dragonlock::resp::fuzzing::roundtrip);
}

#[test]
fn the_named_edge_inputs_fail_as_expected() {
    use dragonlock::resp::fuzzing::decode_whole;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode");
    let read = |n: &str| std::fs::read(dir.join(n)).unwrap();
    assert!(decode_whole(&read("nest-at-limit")).1.is_none());
    assert_eq!(
        decode_whole(&read("nest-past-limit")).1.as_deref(),
        Some("TooDeep")
    );
    assert_eq!(
        decode_whole(&read("nest-100k")).1.as_deref(),
        Some("TooDeep")
    );
    assert_eq!(
        decode_whole(&read("huge-array")).1.as_deref(),
        Some("TooManyElements")
    );
    assert_eq!(
        decode_whole(&read("huge-bulk")).1.as_deref(),
        Some("BulkTooLong")
    );
    // Inputs the decoder took before the grammar became strict: each is an error now.
    let (frames, err) = decode_whole(&read("regression-null-len-leading-zero"));
    assert_eq!((frames.len(), err.as_deref()), (1, Some("InvalidLength")));
    let (frames, err) = decode_whole(&read("leading-plus-length"));
    assert_eq!((frames.len(), err.as_deref()), (0, Some("InvalidInteger")));
    let (frames, err) = decode_whole(&read("off-grammar-scalars"));
    assert_eq!(
        (frames.len(), err.as_deref()),
        (0, Some("InvalidLineEnding"))
    );
}
