//! `rrpc upload` and `rrpc download`.

use std::path::Path;
use std::time::Duration;

use crate::transfer::{self, TransferOptions, TransferReport};

use super::{connect, CliError};

fn report(verb: &str, what: &str, r: &TransferReport) {
    println!(
        "{verb} {what}: {} bytes in {:.2} s ({:.1} MiB/s), sha256 {} (checked on both sides)",
        r.bytes,
        r.elapsed.as_secs_f64(),
        r.mib_per_sec(),
        r.sha256
    );
}

pub(super) async fn upload(
    addr: &str,
    local: &Path,
    remote: &str,
    timeout: Duration,
) -> Result<(), CliError> {
    let conn = connect(addr, timeout).await?;
    let fs = transfer::fs_service(&conn).await?;
    let r = transfer::upload_file(&fs, local, remote, &TransferOptions::default()).await?;
    report("uploaded", &format!("{} -> {remote}", local.display()), &r);
    conn.close();
    Ok(())
}

pub(super) async fn download(
    addr: &str,
    remote: &str,
    local: &Path,
    timeout: Duration,
) -> Result<(), CliError> {
    let conn = connect(addr, timeout).await?;
    let fs = transfer::fs_service(&conn).await?;
    let r = transfer::download_file(&fs, remote, local, &TransferOptions::default()).await?;
    report(
        "downloaded",
        &format!("{remote} -> {}", local.display()),
        &r,
    );
    conn.close();
    Ok(())
}
