//! Writes the saved corpus: `fuzz/corpus/<target>/<name>`, replacing what
//! is there. Run from anywhere:
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds`.

use std::path::Path;

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let seeds = devices_fuzz::seeds::all();
    let mut targets: Vec<&str> = seeds.iter().map(|s| s.0).collect();
    targets.dedup();
    for target in targets {
        let dir = corpus.join(target);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("corpus directory");
    }
    for (target, name, input) in seeds {
        let path = corpus.join(target).join(name);
        std::fs::write(&path, &input).expect("seed file");
        println!("{} ({} bytes)", path.display(), input.len());
    }
}
