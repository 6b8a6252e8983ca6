//! Replays every file of `fuzz/corpus/<target>` through its check, so
//! inputs the fuzzer found (and the seeds) are tested on stable.

use std::fs;
use std::path::Path;

#[test]
fn every_corpus_file_passes_its_check() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
    let mut failures = Vec::new();
    for target in kestrel_fuzz_checks::TARGETS {
        let dir = corpus.join(target.name);
        let mut files: Vec<_> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("corpus entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{} has no seed inputs", dir.display());
        for file in files {
            let data = fs::read(&file).expect("reading a corpus file");
            if std::panic::catch_unwind(|| (target.check)(&data)).is_err() {
                failures.push(file.display().to_string());
            }
        }
    }
    assert!(failures.is_empty(), "checks failed on {failures:#?}");
}
