//! YAML as KitOps' `kit` prints a Kitfile (`info`, `unpack`, `init`): gopkg.in/yaml.v3 with
//! an indent of 2 over kit's structs. What differs from a generic YAML writer, and what
//! kit users diff against: sequences in a mapping are indented (`  - x`); `authors` is a
//! flow sequence (`[a, b]`); a string that would read back as another type (`"1.0"`,
//! `"yes"`, `"2024-01-01"`, `""`) is double-quoted, one that plain style cannot hold is
//! single-quoted, and double quotes take what single quotes cannot; multi-line strings are
//! literal blocks; lines are never folded; numbers are Go float64s (`1e+06`), since kit
//! reads them back from the config's JSON; map keys under `parameters` are sorted as Go's
//! encoder sorts them.

use serde_yaml_ng::Value;

/// The YAML document for `v` (a mapping from a serialized Kitfile).
pub fn kitfile_to_string(v: &Value) -> String {
    node_to_string(v, false, false)
}

/// One node of a Kitfile as its own document (`info --filter`); `in_parameters` when the
/// node is (inside) a `parameters` value, whose maps Go sorts; `is_package` when it is
/// the `package` mapping.
pub fn node_to_string(v: &Value, in_parameters: bool, is_package: bool) -> String {
    let mut out = String::new();
    let mut e = Emitter { out: &mut out };
    let ctx = Ctx {
        sorted: in_parameters,
        package: is_package,
    };
    match v {
        Value::Mapping(m) if !m.is_empty() => e.mapping(m, 0, ctx),
        Value::Sequence(s) if !s.is_empty() => e.sequence(s, 0, ctx),
        other => {
            e.inline(other, 0, ctx);
            e.out.push('\n');
        }
    }
    out
}

#[derive(Clone, Copy, Default)]
struct Ctx {
    /// Inside `parameters`: keys sorted as Go sorts map keys.
    sorted: bool,
    /// The `package` mapping, whose `authors` kit's struct tags make a flow sequence.
    package: bool,
}

struct Emitter<'a> {
    out: &'a mut String,
}

impl Emitter<'_> {
    fn pad(&mut self, n: usize) {
        self.out.extend(std::iter::repeat_n(' ', n));
    }

    /// A block mapping whose keys start at column `indent`; the caller has placed the
    /// cursor at that column for the first key.
    fn mapping(&mut self, m: &serde_yaml_ng::Mapping, indent: usize, ctx: Ctx) {
        let mut entries: Vec<(&Value, &Value)> = m.iter().collect();
        if ctx.sorted {
            entries.sort_by(|a, b| go_key_cmp(a.0, b.0));
        }
        for (i, (k, v)) in entries.into_iter().enumerate() {
            if i > 0 {
                self.pad(indent);
            }
            let key = scalar_text(k);
            let child = Ctx {
                sorted: ctx.sorted || key == "parameters",
                package: indent == 0 && !ctx.sorted && !ctx.package && key == "package",
            };
            let flow = ctx.package && key == "authors";
            // libyaml's check_simple_key: a key over 128 bytes or spanning lines is written
            // in the explicit `? key` / `: value` form.
            if key.len() > 128 || key.contains(is_break) {
                self.out.push_str("? ");
                self.inline(&Value::String(key), indent, child);
                self.out.push('\n');
                self.pad(indent);
                self.out.push(':');
                self.explicit_value(v, indent, child, flow);
                continue;
            }
            self.out.push_str(&quote(&key, Place::Key));
            self.out.push(':');
            self.value(v, indent, child, flow);
        }
    }

    /// The value after an explicit key's `:`: a collection starts on the same line, its
    /// items at `indent + 2`.
    fn explicit_value(&mut self, v: &Value, indent: usize, ctx: Ctx, flow: bool) {
        match v {
            Value::Mapping(m) if !m.is_empty() => {
                self.out.push(' ');
                self.mapping(m, indent + 2, ctx);
            }
            Value::Sequence(s) if !s.is_empty() && !flow => {
                self.out.push(' ');
                self.sequence(s, indent + 2, ctx);
            }
            _ => self.value(v, indent, ctx, flow),
        }
    }

    /// The value after `key:`, the cursor just after the colon.
    fn value(&mut self, v: &Value, indent: usize, ctx: Ctx, flow: bool) {
        match v {
            Value::Mapping(m) if !m.is_empty() => {
                self.out.push('\n');
                self.pad(indent + 2);
                self.mapping(m, indent + 2, ctx);
            }
            Value::Sequence(s) if !s.is_empty() && !flow => {
                self.out.push('\n');
                self.pad(indent + 2);
                self.sequence(s, indent + 2, ctx);
            }
            Value::Sequence(s) if !s.is_empty() => {
                self.out.push(' ');
                self.flow_sequence(s);
                self.out.push('\n');
            }
            other => {
                self.out.push(' ');
                self.inline(other, indent, ctx);
                self.out.push('\n');
            }
        }
    }

    /// A block sequence whose dashes are at column `indent` (cursor already there).
    fn sequence(&mut self, s: &[Value], indent: usize, ctx: Ctx) {
        for (i, item) in s.iter().enumerate() {
            if i > 0 {
                self.pad(indent);
            }
            self.out.push_str("- ");
            match item {
                Value::Mapping(m) if !m.is_empty() => self.mapping(m, indent + 2, ctx),
                Value::Sequence(inner) if !inner.is_empty() => {
                    self.sequence(inner, indent + 2, ctx)
                }
                other => {
                    self.inline(other, indent, ctx);
                    self.out.push('\n');
                }
            }
        }
    }

    fn flow_sequence(&mut self, s: &[Value]) {
        self.out.push('[');
        for (i, item) in s.iter().enumerate() {
            if i > 0 {
                self.out.push_str(", ");
            }
            match item {
                Value::String(t) => self.out.push_str(&quote(t, Place::Flow)),
                Value::Sequence(inner) => self.flow_sequence(inner),
                other => self.out.push_str(&scalar_text(other)),
            }
        }
        self.out.push(']');
    }

    /// A scalar or an empty collection on the current line; `indent` is the column of the
    /// key that owns it (a literal block's lines go 2 further).
    fn inline(&mut self, v: &Value, indent: usize, _ctx: Ctx) {
        match v {
            Value::String(s) => {
                let q = quote(s, Place::Block);
                if q.starts_with('|') {
                    self.literal(s, indent + 2);
                } else {
                    self.out.push_str(&q);
                }
            }
            Value::Sequence(_) => self.out.push_str("[]"),
            Value::Mapping(_) => self.out.push_str("{}"),
            Value::Tagged(t) => self.inline(&t.value, indent, _ctx),
            other => self.out.push_str(&scalar_text(other)),
        }
    }

    /// A literal block scalar (`|`, `|-`, `|+`), its lines at column `indent`; no trailing
    /// newline (the caller ends the line).
    fn literal(&mut self, s: &str, indent: usize) {
        self.out.push('|');
        if s.starts_with([' ', '\n']) {
            self.out.push('2');
        }
        let trailing = s.len() - s.trim_end_matches('\n').len();
        match trailing {
            0 => self.out.push('-'),
            1 if s.len() > 1 => {}
            _ => self.out.push('+'),
        }
        let body = s.strip_suffix('\n').unwrap_or(s);
        for line in body.split('\n') {
            self.out.push('\n');
            if !line.is_empty() {
                self.pad(indent);
                self.out.push_str(line);
            }
        }
    }
}

/// A non-string scalar as Go prints it (numbers are float64 in kit: it reads the config's
/// JSON into `any`).
fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match n.as_f64() {
            Some(f) => go_float(f),
            None => n.to_string(),
        },
        Value::Tagged(t) => scalar_text(&t.value),
        Value::Sequence(_) => "[]".into(),
        Value::Mapping(_) => "{}".into(),
    }
}

/// `strconv.FormatFloat(f, 'g', -1, 64)` as yaml.v3 prints a float64 (`.inf`, `.nan`).
fn go_float(f: f64) -> String {
    if f.is_nan() {
        return ".nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { ".inf" } else { "-.inf" }.into();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0" } else { "0" }.into();
    }
    // Shortest round-trip digits and exponent, from Rust's `{:e}` ("1.2345e8").
    let sci = format!("{f:e}");
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let neg = mant.starts_with('-');
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if neg { "-" } else { "" };
    // Go's shortest 'g': %e when the exponent is < -4 or >= 6 (eprec is 6 for shortest).
    if !(-4..6).contains(&exp) {
        return sci_go(sign, &digits, exp);
    }
    let dp = exp + 1;
    if dp <= 0 {
        format!("{sign}0.{}{digits}", "0".repeat((-dp) as usize))
    } else if dp as usize >= digits.len() {
        format!("{sign}{digits}{}", "0".repeat(dp as usize - digits.len()))
    } else {
        let (a, b) = digits.split_at(dp as usize);
        format!("{sign}{a}.{b}")
    }
}

/// Go's `%e` with shortest digits: `1e+06`, `1.5e-07` (two exponent digits at least).
fn sci_go(sign: &str, digits: &str, exp: i32) -> String {
    let (first, rest) = digits.split_at(1);
    let frac = if rest.is_empty() {
        String::new()
    } else {
        format!(".{rest}")
    };
    let esign = if exp < 0 { '-' } else { '+' };
    format!("{sign}{first}{frac}e{esign}{:02}", exp.abs())
}

#[derive(Clone, Copy, PartialEq)]
enum Place {
    Block,
    Flow,
    Key,
}

/// The string as yaml.v3 writes it: plain, 'single', "double" or `|` (literal marker only;
/// the caller writes the block).
fn quote(s: &str, place: Place) -> String {
    let plain_ok = !resolves_to_non_string(s) && !is_old_bool(s) && !is_base60_float(s);
    let a = analyze(s);
    // U+2028/U+2029 are line breaks to a YAML reader: a literal block would need them as
    // its line ends too; double quotes escape them.
    if s.contains(['\u{2028}', '\u{2029}']) {
        return double(s);
    }
    if s.contains('\n') {
        if place == Place::Block && a.block_allowed {
            return "|".into();
        }
        return double(s);
    }
    if !plain_ok {
        return double(s);
    }
    let plain_allowed = match place {
        Place::Flow => a.flow_plain_allowed,
        Place::Block | Place::Key => a.block_plain_allowed,
    };
    if plain_allowed {
        s.to_string()
    } else if a.single_allowed {
        format!("'{}'", s.replace('\'', "''"))
    } else {
        double(s)
    }
}

struct Analysis {
    flow_plain_allowed: bool,
    block_plain_allowed: bool,
    single_allowed: bool,
    block_allowed: bool,
}

fn is_printable(c: char) -> bool {
    // libyaml's IS_PRINTABLE: NEL and characters beyond the BMP are escaped, not written.
    matches!(c, '\n' | '\u{20}'..='\u{7E}' | '\u{A0}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}')
        && c != '\u{FEFF}'
}

fn is_break(c: char) -> bool {
    matches!(c, '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// libyaml's `yaml_emitter_analyze_scalar`, which yaml.v3 runs on every scalar.
fn analyze(s: &str) -> Analysis {
    let chars: Vec<char> = s.chars().collect();
    if chars.is_empty() {
        return Analysis {
            flow_plain_allowed: false,
            block_plain_allowed: true,
            single_allowed: true,
            block_allowed: false,
        };
    }
    let (mut flow_ind, mut block_ind) = (false, false);
    if s.starts_with("---") || s.starts_with("...") {
        let next = chars.get(3).copied();
        if next.is_none_or(|c| is_blank(c) || is_break(c)) {
            flow_ind = true;
            block_ind = true;
        }
    }
    let (mut leading_space, mut leading_break, mut trailing_space, mut trailing_break) =
        (false, false, false, false);
    let (mut break_space, mut space_break, mut special, mut line_breaks) =
        (false, false, false, false);
    let (mut prev_space, mut prev_break) = (false, false);
    let mut preceded_by_ws = true;
    for (i, &c) in chars.iter().enumerate() {
        let next = chars.get(i + 1).copied();
        let followed_by_ws = next.is_none_or(|n| is_blank(n) || is_break(n));
        if i == 0 {
            if "#,[]{}&*!|>'\"%@`".contains(c) {
                flow_ind = true;
                block_ind = true;
            }
            if c == '?' || c == ':' {
                flow_ind = true;
                if followed_by_ws {
                    block_ind = true;
                }
            }
            if c == '-' && followed_by_ws {
                flow_ind = true;
                block_ind = true;
            }
        } else {
            if ",?[]{}".contains(c) {
                flow_ind = true;
            }
            if c == ':' {
                flow_ind = true;
                if followed_by_ws {
                    block_ind = true;
                }
            }
            if c == '#' && preceded_by_ws {
                flow_ind = true;
                block_ind = true;
            }
        }
        if !is_printable(c) {
            special = true;
        }
        if is_break(c) {
            line_breaks = true;
        }
        if c == ' ' {
            if i == 0 {
                leading_space = true;
            }
            if i + 1 == chars.len() {
                trailing_space = true;
            }
            if prev_break {
                break_space = true;
            }
            prev_space = true;
            prev_break = false;
        } else if is_break(c) {
            if i == 0 {
                leading_break = true;
            }
            if i + 1 == chars.len() {
                trailing_break = true;
            }
            if prev_space {
                space_break = true;
            }
            prev_break = true;
            prev_space = false;
        } else {
            prev_space = false;
            prev_break = false;
        }
        preceded_by_ws = is_blank(c) || is_break(c);
    }
    let mut a = Analysis {
        flow_plain_allowed: true,
        block_plain_allowed: true,
        single_allowed: true,
        block_allowed: true,
    };
    if leading_space || leading_break || trailing_space || trailing_break {
        a.flow_plain_allowed = false;
        a.block_plain_allowed = false;
    }
    if trailing_space {
        a.block_allowed = false;
    }
    if break_space {
        a.flow_plain_allowed = false;
        a.block_plain_allowed = false;
        a.single_allowed = false;
    }
    if space_break || special {
        a.flow_plain_allowed = false;
        a.block_plain_allowed = false;
        a.single_allowed = false;
        a.block_allowed = false;
    }
    if line_breaks {
        a.flow_plain_allowed = false;
        a.block_plain_allowed = false;
    }
    if flow_ind {
        a.flow_plain_allowed = false;
    }
    if block_ind {
        a.block_plain_allowed = false;
    }
    a
}

/// A double-quoted scalar with yaml.v3's (libyaml's) escapes.
fn double(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '\0' => o.push_str("\\0"),
            '\u{7}' => o.push_str("\\a"),
            '\u{8}' => o.push_str("\\b"),
            '\t' => o.push_str("\\t"),
            '\n' => o.push_str("\\n"),
            '\u{B}' => o.push_str("\\v"),
            '\u{C}' => o.push_str("\\f"),
            '\r' => o.push_str("\\r"),
            '\u{1B}' => o.push_str("\\e"),
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\u{85}' => o.push_str("\\N"),
            '\u{A0}' => o.push_str("\\_"),
            '\u{2028}' => o.push_str("\\L"),
            '\u{2029}' => o.push_str("\\P"),
            c if is_printable(c) => o.push(c),
            c if (c as u32) <= 0xFF => o.push_str(&format!("\\x{:02X}", c as u32)),
            c if (c as u32) <= 0xFFFF => o.push_str(&format!("\\u{:04X}", c as u32)),
            c => o.push_str(&format!("\\U{:08X}", c as u32)),
        }
    }
    o.push('"');
    o
}

/// yaml.v3's `resolve` for an untagged plain scalar: would it read back as null, a bool, a
/// number or a timestamp?
fn resolves_to_non_string(s: &str) -> bool {
    const MAP: &[&str] = &[
        "", "~", "null", "Null", "NULL", "true", "True", "TRUE", "false", "False", "FALSE", ".nan",
        ".NaN", ".NAN", ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf",
        "-.INF", "<<",
    ];
    let Some(first) = s.chars().next() else {
        return true;
    };
    let hinted = first.is_ascii_digit() || "+-.yYnNtTfFoO~<".contains(first);
    if hinted && MAP.contains(&s) {
        return true;
    }
    if first == '.' {
        return go_parse_float(s);
    }
    if first.is_ascii_digit() || first == '+' || first == '-' {
        if is_timestamp(s) {
            return true;
        }
        let plain = s.replace('_', "");
        if go_parse_int(&plain) {
            return true;
        }
        if is_yaml_style_float(&plain) {
            return true;
        }
        for (prefix, radix) in [("0b", 2), ("-0b", 2), ("0o", 8), ("-0o", 8)] {
            if let Some(rest) = plain.strip_prefix(prefix)
                && !rest.is_empty()
                && i64::from_str_radix(rest, radix).is_ok()
            {
                return true;
            }
        }
    }
    false
}

/// `strconv.ParseInt(s, 0, 64)` or `ParseUint`: sign, then 0x/0o/0b/0 prefixes.
fn go_parse_int(s: &str) -> bool {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (digits, radix) = if let Some(r) = body.strip_prefix("0x").or(body.strip_prefix("0X")) {
        (r, 16)
    } else if let Some(r) = body.strip_prefix("0o").or(body.strip_prefix("0O")) {
        (r, 8)
    } else if let Some(r) = body.strip_prefix("0b").or(body.strip_prefix("0B")) {
        (r, 2)
    } else if body.len() > 1 && body.starts_with('0') {
        (&body[1..], 8)
    } else {
        (body, 10)
    };
    !digits.is_empty() && u128::from_str_radix(digits, radix).is_ok_and(|v| v <= u64::MAX as u128)
}

/// `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`
fn is_yaml_style_float(s: &str) -> bool {
    let b = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (mant, exp) = match b.find(['e', 'E']) {
        Some(i) => (&b[..i], Some(&b[i + 1..])),
        None => (b, None),
    };
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit());
    let mant_ok = match mant.split_once('.') {
        Some(("", f)) => digits(f),
        Some((i, f)) => digits(i) && (f.is_empty() || digits(f)),
        None => digits(mant),
    };
    let exp_ok = exp.is_none_or(|e| digits(e.strip_prefix(['+', '-']).unwrap_or(e)));
    mant_ok && exp_ok
}

/// Go's ParseFloat for a string starting with '.' (".5", ".5e3"; ".inf" is in the map).
fn go_parse_float(s: &str) -> bool {
    is_yaml_style_float(s)
}

/// yaml.v3's parseTimestamp: 4 digits, '-', then one of its layouts (date, or date and time).
fn is_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 8 || !b[..4].iter().all(u8::is_ascii_digit) || b[4] != b'-' {
        return false;
    }
    let num = |t: &str, lo: usize, hi: usize| {
        (lo..=hi).contains(&t.len()) && t.bytes().all(|c| c.is_ascii_digit())
    };
    let (date, time) = match s.find(['T', 't', ' ']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mut parts = date.splitn(3, '-');
    let (Some(y), Some(m), Some(d)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    if !(num(y, 4, 4) && num(m, 1, 2) && num(d, 1, 2)) {
        return false;
    }
    let (mo, da): (u32, u32) = (m.parse().unwrap_or(0), d.parse().unwrap_or(0));
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) {
        return false;
    }
    match time {
        None => true,
        // "15:4:5" with optional fraction and zone; a rough check is enough to quote.
        Some(t) => {
            let hms: Vec<&str> = t
                .split(['Z', '+', '-'])
                .next()
                .unwrap_or("")
                .split('.')
                .next()
                .unwrap_or("")
                .split(':')
                .collect();
            hms.len() == 3 && hms.iter().all(|p| num(p, 1, 2))
        }
    }
}

fn is_old_bool(s: &str) -> bool {
    matches!(
        s,
        "y" | "Y"
            | "yes"
            | "Yes"
            | "YES"
            | "on"
            | "On"
            | "ON"
            | "n"
            | "N"
            | "no"
            | "No"
            | "NO"
            | "off"
            | "Off"
            | "OFF"
    )
}

/// `^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$` (YAML 1.1 sexagesimal).
fn is_base60_float(s: &str) -> bool {
    let b = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (main, frac) = match b.split_once('.') {
        Some((m, f)) => (m, Some(f)),
        None => (b, None),
    };
    let mut parts = main.split(':');
    let Some(head) = parts.next() else {
        return false;
    };
    let head_ok = head.starts_with(|c: char| c.is_ascii_digit())
        && head.bytes().all(|c| c.is_ascii_digit() || c == b'_');
    let rest: Vec<&str> = parts.collect();
    let rest_ok = !rest.is_empty()
        && rest.iter().all(|p| {
            (1..=2).contains(&p.len())
                && p.bytes().all(|c| c.is_ascii_digit())
                && (p.len() == 1 || p.as_bytes()[0] <= b'5')
        });
    let frac_ok = frac.is_none_or(|f| f.bytes().all(|c| c.is_ascii_digit() || c == b'_'));
    head_ok && rest_ok && frac_ok
}

/// yaml.v3's `keyList.Less` for string keys: letters after other characters, runs of
/// digits compared as numbers.
fn go_key_cmp(a: &Value, b: &Value) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (a, b) = (scalar_text(a), scalar_text(b));
    let (ar, br): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut digits = false;
    let less = |x: bool| if x { Ordering::Less } else { Ordering::Greater };
    for i in 0..ar.len().min(br.len()) {
        if ar[i] == br[i] {
            digits = ar[i].is_ascii_digit();
            continue;
        }
        let (al, bl) = (ar[i].is_alphabetic(), br[i].is_alphabetic());
        if al && bl {
            return ar[i].cmp(&br[i]);
        }
        if al || bl {
            return less(if digits { al } else { bl });
        }
        let (mut an, mut bn) = (0i64, 0i64);
        if ar[i] == '0' || br[i] == '0' {
            let mut j = i;
            while j > 0 && ar[j - 1].is_ascii_digit() {
                j -= 1;
                if ar[j] != '0' {
                    an = 1;
                    bn = 1;
                    break;
                }
            }
        }
        let mut ai = i;
        while ai < ar.len() && ar[ai].is_ascii_digit() {
            an = an
                .saturating_mul(10)
                .saturating_add(ar[ai] as i64 - '0' as i64);
            ai += 1;
        }
        let mut bi = i;
        while bi < br.len() && br[bi].is_ascii_digit() {
            bn = bn
                .saturating_mul(10)
                .saturating_add(br[bi] as i64 - '0' as i64);
            bi += 1;
        }
        if an != bn {
            return an.cmp(&bn);
        }
        if ai != bi {
            return ai.cmp(&bi);
        }
        return ar[i].cmp(&br[i]);
    }
    ar.len().cmp(&br.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_package_authors_is_a_flow_sequence() {
        let v: Value = serde_yaml_ng::from_str(
            "package:\n  authors: [a, b]\nmodel:\n  parameters:\n    authors:\n      - name: x\n",
        )
        .unwrap();
        assert_eq!(
            kitfile_to_string(&v),
            "package:\n  authors: [a, b]\nmodel:\n  parameters:\n    authors:\n      - name: x\n"
        );
    }

    /// What kit v1.7.0's `info` printed on 2026-12-05 for keys over 128 bytes and keys that
    /// span lines: yaml.v3's explicit `? key` / `: value` form.
    #[test]
    fn long_and_multiline_keys_are_explicit() {
        let k = "k".repeat(130);
        let v: Value = serde_yaml_ng::from_str(&format!(
            "model:\n  parameters:\n    {k}: 1\n    short: x\n    {k}2: {{nested: 2, list: [a, b]}}\n    {k}3: [1, 2]\n    {k}4: \"two\\nlines\\n\"\n    \"a\\nb\": 1\n    \"c\\nd\\n\": {{x: 1}}\n"
        ))
        .unwrap();
        let want = format!(
            "model:\n  parameters:\n    ? |-\n      a\n      b\n    : 1\n    ? |\n      c\n      d\n    : x: 1\n    ? {k}\n    : 1\n    ? {k}2\n    : list:\n        - a\n        - b\n      nested: 2\n    ? {k}3\n    : - 1\n      - 2\n    ? {k}4\n    : |\n      two\n      lines\n    short: x\n"
        );
        assert_eq!(kitfile_to_string(&v), want);
    }

    #[test]
    fn floats_as_go_prints_them() {
        for (f, s) in [
            (1000.0, "1000"),
            (1e6, "1e+06"),
            (123456789.0, "1.23456789e+08"),
            (100000.0, "100000"),
            (0.001, "0.001"),
            (0.00001, "1e-05"),
            (-2.5, "-2.5"),
            (1e21, "1e+21"),
            (0.0, "0"),
        ] {
            assert_eq!(go_float(f), s, "{f}");
        }
    }

    #[test]
    fn strings_quoted_as_yaml_v3_quotes_them() {
        for (s, q) in [
            ("plain", "plain"),
            ("yes", "\"yes\""),
            ("1.0", "\"1.0\""),
            ("0x10", "\"0x10\""),
            ("2024-01-01", "\"2024-01-01\""),
            ("", "\"\""),
            ("~", "\"~\""),
            (": colon start", "': colon start'"),
            ("a #comment", "'a #comment'"),
            ("*star", "'*star'"),
            ("--- dashes", "'--- dashes'"),
            ("  lead", "'  lead'"),
            ("tab\there", "\"tab\\there\""),
            ("quote \" and \\ back", "quote \" and \\ back"),
            ("it's", "it's"),
            ("-x", "-x"),
            ("1:20", "\"1:20\""),
            ("12abc", "12abc"),
        ] {
            assert_eq!(quote(s, Place::Block), q, "{s:?}");
        }
        assert_eq!(quote("a\u{85}b", Place::Block), "\"a\\Nb\"");
        assert_eq!(quote("x\u{2028}y\nz", Place::Block), "\"x\\Ly\\nz\"");
        assert_eq!(quote("smile 😀", Place::Block), "\"smile \\U0001F600\"");
        assert_eq!(quote("a, b", Place::Flow), "'a, b'");
        assert_eq!(quote("a, b", Place::Block), "a, b");
    }
}
