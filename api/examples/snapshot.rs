//! Prints the wire snapshot of the current contracts, or with `--write`
//! replaces `api/descriptor.snapshot` with it (a deliberate, reviewed step).

use std::path::Path;

fn main() -> std::io::Result<()> {
    let text = api::compat::render(&api::compat::entries(&api::descriptor_set()));
    if std::env::args().any(|a| a == "--write") {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(api::compat::SNAPSHOT_FILE);
        std::fs::write(&path, text)?;
        println!("wrote {}", path.display());
    } else {
        print!("{text}");
    }
    Ok(())
}
