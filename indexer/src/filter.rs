//! Metadata filters: a small boolean language over an image's record, the
//! same on the CLI (`--filter`), in the HTTP API (`"filter"`) and in the
//! library.
//!
//! ```text
//! expr    := or
//! or      := and ("or" and)*
//! and     := unary ("and" unary)*
//! unary   := "not" unary | "(" expr ")" | field op value
//! field   := path | folder | taken | width | height | bytes | camera
//! op      := = | != | < | <= | > | >= | glob
//! value   := number | "double-quoted string" | YYYY-MM-DD | YYYY-MM-DDTHH:MM:SS
//! ```
//!
//! `path` is relative and `/`-separated, `folder` its directory part (`""`
//! at the top), `taken` the EXIF capture time else the file's modification
//! time, `camera` EXIF make and model. A comparison with a field the image
//! does not have (`camera` without EXIF) is false, so `not camera = "X"`
//! holds for it. A date without a time stands for the whole day: `taken =
//! 2019-06-01` matches any time that day, `taken <= 2019-06-01` includes it,
//! `taken > 2019-06-01` starts the day after. `glob` matches `*` and `?`
//! within one folder level and `**` across levels.

use std::fmt;

use crate::collection::ImageRecord;

/// A parsed filter expression, ready to test records.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    source: String,
    root: Node,
}

/// Why an expression does not parse: where, and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid filter at column {column}: expected {expected}, found {found}\n  {expression}\n  {caret}^", caret = " ".repeat(.column.saturating_sub(1)))]
pub struct FilterError {
    /// The expression as given.
    pub expression: String,
    /// 1-based column (in characters) of the offending token.
    pub column: usize,
    /// What the grammar allows at that point.
    pub expected: String,
    /// What is there instead (quoted), or "the end of the expression".
    pub found: String,
}

/// A record field a filter can test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The relative path.
    Path,
    /// The directory part of the path.
    Folder,
    /// EXIF capture time, else modification time.
    Taken,
    /// Width in pixels.
    Width,
    /// Height in pixels.
    Height,
    /// File size in bytes.
    Bytes,
    /// EXIF make and model.
    Camera,
}

impl Field {
    const ALL: [(&'static str, Field); 7] = [
        ("path", Field::Path),
        ("folder", Field::Folder),
        ("taken", Field::Taken),
        ("width", Field::Width),
        ("height", Field::Height),
        ("bytes", Field::Bytes),
        ("camera", Field::Camera),
    ];

    fn is_text(self) -> bool {
        matches!(self, Field::Path | Field::Folder | Field::Camera)
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `glob`
    Glob,
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Text(String),
    Number(f64),
    /// A time span in seconds since 1970: `[start, end)`; a date is a day,
    /// a date and time one second.
    Time(i64, i64),
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Not(Box<Node>),
    Compare(Field, Op, Value),
}

impl Filter {
    /// Parses `expr`; the error shows the column and what was expected.
    pub fn parse(expr: &str) -> Result<Filter, FilterError> {
        let tokens = lex(expr)?;
        let mut p = Parser {
            src: expr,
            tokens,
            at: 0,
        };
        let root = p.or()?;
        if p.at < p.tokens.len() {
            return Err(p.error("`and`, `or` or the end of the expression"));
        }
        Ok(Filter {
            source: expr.to_string(),
            root,
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether `record` passes the filter.
    pub fn matches(&self, record: &ImageRecord) -> bool {
        eval(&self.root, record)
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl std::str::FromStr for Filter {
    type Err = FilterError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Filter::parse(s)
    }
}

fn eval(node: &Node, r: &ImageRecord) -> bool {
    match node {
        Node::And(a, b) => eval(a, r) && eval(b, r),
        Node::Or(a, b) => eval(a, r) || eval(b, r),
        Node::Not(a) => !eval(a, r),
        Node::Compare(field, op, value) => compare(*field, *op, value, r),
    }
}

fn compare(field: Field, op: Op, value: &Value, r: &ImageRecord) -> bool {
    match (field, value) {
        (Field::Path | Field::Folder | Field::Camera, Value::Text(want)) => {
            let have = match field {
                Field::Path => r.path.as_str(),
                Field::Folder => r.folder(),
                _ => match &r.camera {
                    Some(c) => c.as_str(),
                    None => return false,
                },
            };
            match op {
                Op::Glob => glob(want.as_bytes(), have.as_bytes()),
                _ => ordered(op, have.cmp(want.as_str())),
            }
        }
        (Field::Width | Field::Height | Field::Bytes, Value::Number(want)) => {
            let have = match field {
                Field::Width => r.width as f64,
                Field::Height => r.height as f64,
                _ => r.size as f64,
            };
            have.partial_cmp(want).is_some_and(|o| ordered(op, o))
        }
        (Field::Taken, Value::Time(start, end)) => {
            let t = r.taken();
            match op {
                Op::Eq => t >= *start && t < *end,
                Op::Ne => t < *start || t >= *end,
                Op::Lt => t < *start,
                Op::Le => t < *end,
                Op::Gt => t >= *end,
                Op::Ge => t >= *start,
                Op::Glob => false,
            }
        }
        _ => false,
    }
}

fn ordered(op: Op, o: std::cmp::Ordering) -> bool {
    use std::cmp::Ordering::*;
    match op {
        Op::Eq => o == Equal,
        Op::Ne => o != Equal,
        Op::Lt => o == Less,
        Op::Le => o != Greater,
        Op::Gt => o == Greater,
        Op::Ge => o != Less,
        Op::Glob => false,
    }
}

/// `*` and `?` within one path level, `**` across levels.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.first() {
        None => text.is_empty(),
        Some(b'*') if pattern.get(1) == Some(&b'*') => {
            // `**/` also matches no folder at all.
            let rest = &pattern[2..];
            if let Some(after) = rest.strip_prefix(b"/") {
                if glob(after, text) {
                    return true;
                }
            }
            (0..=text.len()).any(|i| glob(rest, &text[i..]))
        }
        Some(b'*') => {
            let rest = &pattern[1..];
            let mut i = 0;
            loop {
                if glob(rest, &text[i..]) {
                    return true;
                }
                if i == text.len() || text[i] == b'/' {
                    return false;
                }
                i += 1;
            }
        }
        Some(b'?') => {
            // One character (UTF-8 aware), never `/`.
            match text.first() {
                Some(&c) if c != b'/' => {
                    let len = utf8_len(c).min(text.len());
                    glob(&pattern[1..], &text[len..])
                }
                _ => false,
            }
        }
        Some(&c) => text.first() == Some(&c) && glob(&pattern[1..], &text[1..]),
    }
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Number(f64),
    Time(i64, i64),
    Op(Op),
    Open,
    Close,
}

/// A token and the byte offset where it starts.
type Spanned = (Tok, usize);

fn column(src: &str, byte: usize) -> usize {
    src[..byte.min(src.len())].chars().count() + 1
}

fn lex(src: &str) -> Result<Vec<Spanned>, FilterError> {
    let err = |at: usize, expected: &str, found: String| FilterError {
        expression: src.to_string(),
        column: column(src, at),
        expected: expected.to_string(),
        found,
    };
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        match c {
            b'(' => {
                out.push((Tok::Open, i));
                i += 1;
            }
            b')' => {
                out.push((Tok::Close, i));
                i += 1;
            }
            b'=' => {
                // `==` is taken as `=`.
                i += if b.get(i + 1) == Some(&b'=') { 2 } else { 1 };
                out.push((Tok::Op(Op::Eq), start));
            }
            b'!' if b.get(i + 1) == Some(&b'=') => {
                out.push((Tok::Op(Op::Ne), i));
                i += 2;
            }
            b'<' | b'>' => {
                let eq = b.get(i + 1) == Some(&b'=');
                let op = match (c, eq) {
                    (b'<', false) => Op::Lt,
                    (b'<', true) => Op::Le,
                    (_, false) => Op::Gt,
                    (_, true) => Op::Ge,
                };
                out.push((Tok::Op(op), i));
                i += 1 + eq as usize;
            }
            b'"' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match src[i..].chars().next() {
                        None => {
                            return Err(err(
                                start,
                                "a closing `\"`",
                                "the end of the expression".into(),
                            ))
                        }
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some('\\') => {
                            let next = src[i + 1..].chars().next();
                            match next {
                                Some(ch @ ('"' | '\\')) => {
                                    s.push(ch);
                                    i += 2;
                                }
                                _ => {
                                    return Err(err(
                                        i,
                                        "`\\\"` or `\\\\` after a backslash",
                                        format!("{:?}", next.map(String::from).unwrap_or_default()),
                                    ))
                                }
                            }
                        }
                        Some(ch) => {
                            s.push(ch);
                            i += ch.len_utf8();
                        }
                    }
                }
                out.push((Tok::Str(s), start));
            }
            c if c.is_ascii_digit() || c == b'-' || c == b'.' => {
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'.' | b'-' | b':' | b'+'))
                {
                    i += 1;
                }
                let text = &src[start..i];
                let tok = if let Some((s, e)) = parse_time(text) {
                    Tok::Time(s, e)
                } else if let Ok(n) = text.parse::<f64>() {
                    if !n.is_finite() {
                        return Err(err(start, "a finite number", format!("{text:?}")));
                    }
                    Tok::Number(n)
                } else {
                    return Err(err(
                        start,
                        "a number or a date (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS)",
                        format!("{text:?}"),
                    ));
                };
                out.push((tok, start));
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                let w = src[start..i].to_ascii_lowercase();
                out.push((
                    if w == "glob" {
                        Tok::Op(Op::Glob)
                    } else {
                        Tok::Word(w)
                    },
                    start,
                ));
            }
            _ => {
                let ch = src[i..].chars().next().unwrap_or(' ');
                return Err(err(
                    i,
                    "a field, an operator, a value or a parenthesis",
                    format!("{:?}", ch.to_string()),
                ));
            }
        }
    }
    Ok(out)
}

/// `YYYY-MM-DD` (a day) or `YYYY-MM-DDTHH:MM:SS` (a second), as `[start, end)`.
fn parse_time(s: &str) -> Option<(i64, i64)> {
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let d: Vec<&str> = date.split('-').collect();
    if d.len() != 3 || d[0].len() != 4 || d[1].len() != 2 || d[2].len() != 2 {
        return None;
    }
    let num = |x: &str| -> Option<i64> {
        x.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| x.parse().ok())
            .flatten()
    };
    let (y, m, day) = (num(d[0])?, num(d[1])?, num(d[2])?);
    match time {
        None => {
            let start = squire_models::image_io::civil_seconds(y, m, day, 0, 0, 0)?;
            Some((start, start + 86_400))
        }
        Some(t) => {
            let t: Vec<&str> = t.split(':').collect();
            if t.len() != 3 || t.iter().any(|x| x.len() != 2) {
                return None;
            }
            let start = squire_models::image_io::civil_seconds(
                y,
                m,
                day,
                num(t[0])?,
                num(t[1])?,
                num(t[2])?,
            )?;
            Some((start, start + 1))
        }
    }
}

struct Parser<'a> {
    src: &'a str,
    tokens: Vec<Spanned>,
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.at).map(|(t, _)| t)
    }

    fn error(&self, expected: &str) -> FilterError {
        let (column, found) = match self.tokens.get(self.at) {
            Some((tok, at)) => (column(self.src, *at), describe(tok, self.src, *at)),
            None => (
                self.src.chars().count() + 1,
                "the end of the expression".to_string(),
            ),
        };
        FilterError {
            expression: self.src.to_string(),
            column,
            expected: expected.to_string(),
            found,
        }
    }

    fn keyword(&mut self, word: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Word(w)) if w == word) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Node, FilterError> {
        let mut left = self.and()?;
        while self.keyword("or") {
            left = Node::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Node, FilterError> {
        let mut left = self.unary()?;
        while self.keyword("and") {
            left = Node::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Node, FilterError> {
        if self.keyword("not") {
            return Ok(Node::Not(Box::new(self.unary()?)));
        }
        if self.peek() == Some(&Tok::Open) {
            self.at += 1;
            let inner = self.or()?;
            if self.peek() != Some(&Tok::Close) {
                return Err(self.error("`)`, `and` or `or`"));
            }
            self.at += 1;
            return Ok(inner);
        }
        let names = Field::ALL
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ");
        let field = match self.peek() {
            Some(Tok::Word(w)) => match Field::ALL.iter().find(|(n, _)| n == w) {
                Some((_, f)) => *f,
                None => return Err(self.error(&format!("a field ({names}), `not` or `(`"))),
            },
            _ => return Err(self.error(&format!("a field ({names}), `not` or `(`"))),
        };
        self.at += 1;
        let op = match self.peek() {
            Some(Tok::Op(op)) => *op,
            _ => return Err(self.error("an operator (=, !=, <, <=, >, >=, glob)")),
        };
        if op == Op::Glob && !field.is_text() {
            return Err(self.error_before(
                "a comparison (=, !=, <, <=, >, >=): `glob` applies to path, folder and camera",
            ));
        }
        self.at += 1;
        let value = match (field, self.peek()) {
            (f, Some(Tok::Str(s))) if f.is_text() => Value::Text(s.clone()),
            (Field::Width | Field::Height | Field::Bytes, Some(Tok::Number(n))) => {
                Value::Number(*n)
            }
            (Field::Taken, Some(Tok::Time(s, e))) => Value::Time(*s, *e),
            (f, _) => {
                let what = match f {
                    Field::Taken => "a date (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS)",
                    f if f.is_text() => "a double-quoted string",
                    _ => "a number",
                };
                return Err(self.error(what));
            }
        };
        self.at += 1;
        Ok(Node::Compare(field, op, value))
    }

    /// An error at the previous token (the operator just read).
    fn error_before(&self, expected: &str) -> FilterError {
        let mut e = self.error(expected);
        if let Some((tok, at)) = self.tokens.get(self.at) {
            e.column = column(self.src, *at);
            e.found = describe(tok, self.src, *at);
        }
        e
    }
}

fn describe(tok: &Tok, src: &str, at: usize) -> String {
    match tok {
        Tok::Str(s) => format!("the string {s:?}"),
        _ => {
            let rest = &src[at..];
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '(' || c == ')')
                .filter(|&e| e > 0)
                .unwrap_or(
                    rest.len()
                        .min(rest.chars().next().map(char::len_utf8).unwrap_or(0))
                        .max(1)
                        .min(rest.len()),
                );
            format!("`{}`", &rest[..end])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(
        path: &str,
        w: u32,
        h: u32,
        bytes: u64,
        taken: Option<&str>,
        camera: Option<&str>,
    ) -> ImageRecord {
        ImageRecord {
            id: 0,
            path: path.into(),
            size: bytes,
            // 2001-09-09T01:46:40 as the modification time.
            mtime_ns: 1_000_000_000 * 1_000_000_000,
            sha256: String::new(),
            width: w,
            height: h,
            exif_taken: taken.map(|t| parse_time(t).unwrap().0),
            camera: camera.map(String::from),
            os_path: None,
            imported: false,
            caption: None,
            url: None,
        }
    }

    fn m(expr: &str, r: &ImageRecord) -> bool {
        Filter::parse(expr)
            .unwrap_or_else(|e| panic!("{e}"))
            .matches(r)
    }

    #[test]
    fn every_field_and_operator() {
        let a = rec(
            "2019/rome/a.jpg",
            1200,
            800,
            5000,
            Some("2019-06-01T12:00:00"),
            Some("Canon EOS 5D"),
        );
        let b = rec("b.png", 640, 480, 100, None, None);
        assert!(m(r#"folder = "2019/rome""#, &a) && !m(r#"folder = "2019/rome""#, &b));
        assert!(m(r#"folder = """#, &b));
        assert!(m(r#"path = "b.png""#, &b) && m(r#"path != "b.png""#, &a));
        assert!(m(r#"path < "c""#, &b) && m(r#"path >= "2019""#, &a));
        assert!(m("width >= 1000", &a) && !m("width >= 1000", &b));
        assert!(m("height < 800", &b) && m("height <= 800", &a) && !m("height < 800", &a));
        assert!(m("bytes > 4999", &a) && m("bytes = 100", &b) && m("bytes != 101", &b));
        assert!(
            m(r#"camera = "Canon EOS 5D""#, &a)
                && !m(r#"camera != "x""#, &b)
                && m(r#"not camera = "x""#, &b)
        );
        assert!(m(r#"camera glob "Canon*""#, &a));
        // Dates: a day is a span; EXIF first, else mtime.
        assert!(
            m("taken = 2019-06-01", &a)
                && m("taken <= 2019-06-01", &a)
                && !m("taken < 2019-06-01", &a)
        );
        assert!(
            m("taken >= 2019-06-01", &a)
                && !m("taken > 2019-06-01", &a)
                && m("taken > 2019-05-31", &a)
        );
        assert!(m("taken = 2019-06-01T12:00:00", &a) && m("taken != 2019-06-01T12:00:01", &a));
        assert!(m("taken = 2001-09-09", &b) && m("taken < 2002-01-01", &b));
        // Globs.
        assert!(m(r#"path glob "2019/*/*.jpg""#, &a) && !m(r#"path glob "*.jpg""#, &a));
        assert!(
            m(r#"path glob "**/*.jpg""#, &a)
                && m(r#"path glob "**.png""#, &b)
                && m(r#"path glob "**/b.png""#, &b)
        );
        assert!(
            m(r#"path glob "2019/rome/?.jpg""#, &a) && !m(r#"path glob "2019?rome/a.jpg""#, &a)
        );
        // Boolean structure and precedence (and binds tighter than or).
        assert!(m(
            r#"width > 5000 or folder = "2019/rome" and width >= 1000"#,
            &a
        ));
        assert!(!m(
            r#"(width > 5000 or folder = "2019/rome") and width < 1000"#,
            &a
        ));
        assert!(m(r#"not (width < 1000) AND NOT path glob "*.png""#, &a));
        assert!(m(
            r#"folder = "2019/rome" and taken >= 2019-06-01 and width >= 1000"#,
            &a
        ));
    }

    #[test]
    fn errors_show_the_column_and_what_was_expected() {
        let cases = [
            (
                "widht > 3",
                1,
                "a field (path, folder, taken, width, height, bytes, camera)",
                "`widht`",
            ),
            ("width 3", 7, "an operator", "`3`"),
            ("width > \"3\"", 9, "a number", "the string \"3\""),
            (
                "taken >= 2019-13-01",
                10,
                "a number or a date",
                "\"2019-13-01\"",
            ),
            (
                "width glob \"1*\"",
                7,
                "`glob` applies to path, folder and camera",
                "`glob`",
            ),
            ("(width > 3", 11, "`)`", "the end of the expression"),
            (
                "width > 3 width < 4",
                11,
                "`and`, `or` or the end",
                "`width`",
            ),
            ("path = \"x", 8, "a closing `\"`", "the end"),
            ("path = x", 8, "a double-quoted string", "`x`"),
            ("", 1, "a field", "the end of the expression"),
        ];
        for (expr, col, expected, found) in cases {
            let e = Filter::parse(expr).expect_err(expr);
            assert_eq!(e.column, col, "{expr}: {e}");
            assert!(e.expected.contains(expected), "{expr}: {e}");
            assert!(e.found.contains(found), "{expr}: {e}");
            assert!(e.to_string().contains(&format!("at column {col}")), "{e}");
        }
    }
}
