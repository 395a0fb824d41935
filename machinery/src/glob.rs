//! `*` patterns as upstream's go-glob matches them (talosconfig context
//! names, disk and link selectors): `*` matches any run of characters,
//! none included; every other character matches itself.

/// Whether `text` matches `pattern`.
#[must_use]
pub fn matches(pattern: &str, text: &str) -> bool {
    if !pattern.contains('*') {
        return pattern == text;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(index) => rest = &rest[index + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn stars_only() {
        assert!(matches("prod", "prod"));
        assert!(!matches("prod", "prod-1"));
        assert!(matches("prod*", "prod-1"));
        assert!(matches("*-1", "prod-1"));
        assert!(matches("p*d*1", "prod-1"));
        assert!(matches("*", "anything"));
        assert!(matches("*", ""));
        assert!(!matches("a*a", "a"));
        assert!(matches("a*a", "aa"));
        assert!(!matches("Prod*", "prod-1"), "case counts");
        assert!(matches("/pci0000:00/*", "/pci0000:00/0000:00:05.0/virtio2"));
        assert!(!matches("?", "x"), "only * is special");
    }
}
