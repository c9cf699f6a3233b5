//! What the admin port's pages share: their head and style, figures and times as they show
//! them, links into the CAS, and log panes (the start of a log from the CAS, escaped, with a
//! link to the whole).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use html_escape::{encode_double_quoted_attribute as attr, encode_text as esc};
use remexec_core::{BlobStore, Digest, ReadRange};

/// The start of every page: its title, and the style they share.
pub fn head(title: &str, refresh: Option<u32>) -> String {
    let refresh = refresh.map_or(String::new(), |s| {
        format!("<meta http-equiv=\"refresh\" content=\"{s}\">")
    });
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">{refresh}<title>{}</title>\
         <style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse;margin-bottom:1.5em}}\
         td,th{{border:1px solid #ccc;padding:.2em .5em;text-align:left;font-size:90%}}\
         .failure{{color:#b00}}.success{{color:#070}}code{{font-size:90%;overflow-wrap:anywhere}}\
         .meta th{{background:#f4f4f4;width:12em}}.note{{color:#666;font-size:85%}}\
         pre{{background:#f7f7f7;border:1px solid #ddd;padding:.5em;max-height:30em;overflow:auto;\
         white-space:pre-wrap;overflow-wrap:anywhere;font-size:85%}}h1 code{{font-size:70%}}</style></head><body>\n",
        esc(title)
    )
}

/// `n` bytes, readably.
pub fn bytes(n: u64) -> String {
    bytesize::ByteSize(n).to_string()
}

/// Most bytes of a test log or action log shown in a page.
pub const SHOWN_LOG: u64 = 64 * 1024;

/// Milliseconds since the epoch as `2026-12-07T20:12:45Z`.
pub fn when(ms: u64) -> String {
    use std::fmt::Write as _;
    if ms == 0 {
        return String::new();
    }
    let Some(t) = UNIX_EPOCH.checked_add(Duration::from_millis(ms)) else {
        return format!("{ms} ms after the epoch");
    };
    let mut out = String::new();
    // humantime prints years 1970 to 9999; a client may send any time.
    match write!(out, "{}", humantime::format_rfc3339_seconds(t)) {
        Ok(()) => out,
        Err(_) => format!("{ms} ms after the epoch"),
    }
}

/// Now, in milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The path of invocation `id`'s page.
pub fn invocation_path(id: &str) -> String {
    // Ids are checked before they are kept; any other is encoded whole.
    match crate::observe::is_invocation_id(id) {
        true => format!("/invocation/{id}"),
        false => format!(
            "/invocation/{}",
            percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC)
        ),
    }
}

/// `bytestream://HOST/[INSTANCE/]blobs/HASH/SIZE` as instance and digest, or `None`.
pub fn bytestream_uri(uri: &str) -> Option<(String, Digest)> {
    let rest = uri.strip_prefix("bytestream://")?;
    let (_host, path) = rest.split_once('/')?;
    let parts: Vec<&str> = path.split('/').collect();
    let at = parts.iter().position(|p| *p == "blobs")?;
    let [hash, size] = parts.get(at + 1..)? else {
        return None;
    };
    let instance = parts.get(..at)?.join("/");
    remexec_core::validate_instance_name(&instance).ok()?;
    let digest = crate::observe::parse_digest(hash, size).ok()?;
    Some((instance, digest))
}

/// The first [`SHOWN_LOG`] bytes of a log, and whether there is more; `Err` text says why it
/// cannot be shown.
pub async fn read_log(
    store: &dyn BlobStore,
    instance: &str,
    digest: Digest,
) -> std::result::Result<(String, bool), String> {
    let range = ReadRange {
        offset: 0,
        limit: Some(SHOWN_LOG),
    };
    let stream = match store.get(instance, digest, range).await {
        Ok(Some(stream)) => stream,
        Ok(None) => return Err(format!("{digest} is not in the CAS")),
        Err(e) => return Err(format!("{digest} could not be read: {e}")),
    };
    let bytes = remexec_core::collect_chunks(stream, SHOWN_LOG)
        .await
        .map_err(|e| format!("{digest} could not be read: {e}"))?;
    let text = strip_ansi(&String::from_utf8_lossy(&bytes));
    Ok((text, digest.size() > SHOWN_LOG))
}

/// `s` without ANSI escape sequences (colours, cursor moves), as consoles print them.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'[') {
            chars.next();
            // Parameters and intermediates, then one final byte in @..~.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

/// A log pane: the start of the blob at `uri`, escaped, with a link to the whole.
pub async fn log_pane_uri(store: &dyn BlobStore, uri: &str, name: &str) -> String {
    match bytestream_uri(uri) {
        Some((instance, digest)) => log_pane(store, &instance, digest, name).await,
        None => format!(
            "<p class=\"note\">not in the CAS: <code>{}</code></p>\n",
            esc(uri)
        ),
    }
}

/// A log pane: the start of blob `digest`, escaped, with a link to the whole.
pub async fn log_pane(store: &dyn BlobStore, instance: &str, digest: Digest, name: &str) -> String {
    let link = text_link(instance, &digest, name, "the whole log");
    match read_log(store, instance, digest).await {
        Ok((text, more)) => {
            let note = match more {
                true => format!(
                    "the first {} of {} shown: {link}",
                    bytes(SHOWN_LOG),
                    bytes(digest.size())
                ),
                false => link,
            };
            log_pane_text(&text, &note)
        }
        Err(why) => format!("<p class=\"note\">{}</p>\n", esc(&why)),
    }
}

/// A log pane of bytes held in memory (an inlined stdout, say), cut to [`SHOWN_LOG`].
pub fn log_pane_bytes(data: &[u8]) -> String {
    let shown = data.get(..SHOWN_LOG as usize).unwrap_or(data);
    let note = match shown.len() < data.len() {
        true => format!("the first {} shown", bytes(SHOWN_LOG)),
        false => String::new(),
    };
    log_pane_text(&strip_ansi(&String::from_utf8_lossy(shown)), &esc(&note))
}

/// `text` in a pane (escaped), and `note` (HTML) below it.
fn log_pane_text(text: &str, note: &str) -> String {
    format!(
        "<pre class=\"log\">{}</pre>\n<p class=\"note\">{note}</p>\n",
        esc(text)
    )
}

/// A link to download (or, for `text`, view) a blob.
pub fn blob_link(instance: &str, digest: &Digest, name: &str, text: &str) -> String {
    let href = blob_path(instance, digest, name);
    format!("<a href=\"{}\">{}</a>", attr(&href), esc(text))
}

/// A link to view a blob as text (a log), in the browser.
pub fn text_link(instance: &str, digest: &Digest, name: &str, text: &str) -> String {
    let href = blob_path(instance, digest, name) + "&view=text";
    format!("<a href=\"{}\">{}</a>", attr(&href), esc(text))
}

fn blob_path(instance: &str, digest: &Digest, name: &str) -> String {
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    format!(
        "/blob/{}?instance={}&name={}",
        digest,
        enc(instance),
        enc(name)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytestream_uris_are_parsed_and_checked() {
        let hash = "a".repeat(64);
        let (instance, d) = bytestream_uri(&format!("bytestream://h:1/blobs/{hash}/12")).unwrap();
        assert_eq!((instance.as_str(), d.size()), ("", 12));
        let (instance, _) =
            bytestream_uri(&format!("bytestream://h/team/a/blobs/{hash}/12")).unwrap();
        assert_eq!(instance, "team/a");
        for bad in [
            "file:///etc/passwd".to_string(),
            format!("bytestream://h/../blobs/{hash}/12"),
            format!("bytestream://h/blobs/{hash}/x"),
            format!("bytestream://h/blobs/{hash}"),
            format!("bytestream://h/blobs/{hash}/12/extra"),
        ] {
            assert!(bytestream_uri(&bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn any_time_prints() {
        assert_eq!(when(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert!(when(u64::MAX).ends_with("ms after the epoch"));
        assert_eq!(when(0), "");
    }

    #[test]
    fn ansi_sequences_are_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[32mINFO:\u{1b}[0m done \u{1b}[1A\u{1b}[K"),
            "INFO: done "
        );
    }
}
