//! What of a guest's title or app id reaches the host after the VM's tag: nothing that could
//! make one window read as another.
//!
//! A title keeps its printable characters but loses control characters (C0, DEL, C1, which
//! include line breaks), the Unicode line and paragraph separators, and the bidirectional
//! controls (embeddings, overrides, isolates and the implicit marks), with which "\[work\] evil"
//! could be drawn as "\[bank\] …" or push the tag out of sight. An app id keeps only what
//! xdg-shell's `set_app_id` describes (a D-Bus well-known name, reverse-DNS: ASCII letters,
//! digits, `.`, `_` and `-`), since hosts look it up as a desktop file name.

/// Whether `c` is dropped from a title: a control character, a line or paragraph separator,
/// or a bidirectional control (U+061C, U+200E/F, U+202A–U+202E, U+2066–U+2069).
pub fn is_unsafe_in_title(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// Whether `c` may appear in an app id (a D-Bus well-known name's characters).
pub fn is_app_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Appends `value` to `out` without the characters a title must not carry.
pub fn push_title(out: &mut String, value: &str) {
    out.extend(value.chars().filter(|&c| !is_unsafe_in_title(c)));
}

/// Appends `value` to `out` keeping only app-id characters.
pub fn push_app_id(out: &mut String, value: &str) {
    out.extend(value.chars().filter(|&c| is_app_id_char(c)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn title(s: &str) -> String {
        let mut out = String::new();
        push_title(&mut out, s);
        out
    }

    fn app_id(s: &str) -> String {
        let mut out = String::new();
        push_app_id(&mut out, s);
        out
    }

    #[test]
    fn title_plain_text_and_emoji_are_kept() {
        assert_eq!(
            title("Editor — notes.txt ✓ 日本"),
            "Editor — notes.txt ✓ 日本"
        );
    }

    #[test]
    fn title_c0_c1_and_del_are_dropped() {
        assert_eq!(
            title("a\u{1}b\u{1b}[31mc\u{7f}d\u{85}e\u{9f}f\tg"),
            "ab[31mcdefg"
        );
    }

    #[test]
    fn title_line_breaks_are_dropped() {
        assert_eq!(
            title("one\ntwo\r\nthree\u{2028}four\u{2029}five\u{b}\u{c}"),
            "onetwothreefourfive"
        );
    }

    #[test]
    fn title_bidi_controls_are_dropped() {
        for c in [
            '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}',
        ] {
            assert_eq!(title(&format!("x{c}y")), "xy", "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn title_right_to_left_text_itself_is_kept() {
        assert_eq!(title("שלום عربي"), "שלום عربي");
    }

    #[test]
    fn app_id_keeps_reverse_dns_characters_only() {
        assert_eq!(app_id("org.gnome.Text-Editor_2"), "org.gnome.Text-Editor_2");
        assert_eq!(app_id("org/../evil app\n\u{202E}é$"), "org..evilapp");
    }
}
