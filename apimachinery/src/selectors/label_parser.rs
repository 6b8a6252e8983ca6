//! The `labelSelector` string grammar: a tokenizer and a flat
//! recursive-descent parser producing validated requirements. Error texts
//! follow Kubernetes' (`found 'x', expected: ...`) so kubectl users recognise
//! them.

use super::label::{Operator, Requirement};
use super::validation::validate_key;
use super::SelectorError;

/// Lexical units of the string syntax. Words (`in`, `notin`, keys, values)
/// are all `Word`: whether `in` is an operator or a value depends on where
/// it stands, which only the parser knows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    End,
    Word(String),
    Comma,
    Open,
    Close,
    Bang,
    Equals,
    DoubleEquals,
    NotEquals,
    Greater,
    Less,
}

impl Token {
    /// The text shown in "found '...'" messages; the end of input shows as ''.
    fn text(&self) -> &str {
        match self {
            Token::End => "",
            Token::Word(w) => w,
            Token::Comma => ",",
            Token::Open => "(",
            Token::Close => ")",
            Token::Bang => "!",
            Token::Equals => "=",
            Token::DoubleEquals => "==",
            Token::NotEquals => "!=",
            Token::Greater => ">",
            Token::Less => "<",
        }
    }
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_symbol(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',' | '>' | '<')
}

/// Splits the input into tokens. Any character that is neither whitespace
/// nor a symbol belongs to a word; bad characters are left for key/value
/// validation to report with context.
fn tokenize(s: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if is_space(c) {
            continue;
        }
        if is_symbol(c) {
            let token = match (c, chars.peek()) {
                ('!', Some('=')) => Token::NotEquals,
                ('=', Some('=')) => Token::DoubleEquals,
                ('!', _) => Token::Bang,
                ('=', _) => Token::Equals,
                ('(', _) => Token::Open,
                (')', _) => Token::Close,
                (',', _) => Token::Comma,
                ('>', _) => Token::Greater,
                _ => Token::Less,
            };
            if matches!(token, Token::NotEquals | Token::DoubleEquals) {
                chars.next();
            }
            tokens.push(token);
            continue;
        }
        let mut word = String::from(c);
        while let Some(&next) = chars.peek() {
            if is_space(next) || is_symbol(next) {
                break;
            }
            word.push(next);
            chars.next();
        }
        tokens.push(Token::Word(word));
    }
    tokens
}

/// Recursive-descent parser (without recursion: the grammar is flat) over
/// the token list; reading past the end keeps yielding `End`.
pub(super) struct Parser {
    tokens: std::vec::IntoIter<Token>,
    peeked: Token,
}

impl Parser {
    pub(super) fn new(s: &str) -> Self {
        let mut tokens = tokenize(s).into_iter();
        let peeked = tokens.next().unwrap_or(Token::End);
        Parser { tokens, peeked }
    }

    fn peek(&self) -> &Token {
        &self.peeked
    }

    fn next(&mut self) -> Token {
        let following = self.tokens.next().unwrap_or(Token::End);
        std::mem::replace(&mut self.peeked, following)
    }

    /// `selector := END | requirement ("," requirement)* END`
    pub(super) fn selector(&mut self) -> Result<Vec<Requirement>, SelectorError> {
        let mut requirements = Vec::new();
        match self.peek() {
            Token::End => return Ok(requirements),
            Token::Word(_) | Token::Bang => {}
            other => {
                return Err(SelectorError::Syntax(format!(
                    "found '{}', expected: !, identifier, or 'end of string'",
                    other.text()
                )))
            }
        }
        loop {
            let requirement = self
                .requirement()
                .map_err(|e| SelectorError::Requirement(Box::new(e)))?;
            requirements.push(requirement);
            match self.next() {
                Token::End => return Ok(requirements),
                Token::Comma => match self.peek() {
                    Token::Word(_) | Token::Bang => {}
                    other => {
                        return Err(SelectorError::Syntax(format!(
                            "found '{}', expected: identifier after ','",
                            other.text()
                        )))
                    }
                },
                other => {
                    return Err(SelectorError::Syntax(format!(
                        "found '{}', expected: ',' or 'end of string'",
                        other.text()
                    )))
                }
            }
        }
    }

    /// `requirement := "!" KEY | KEY | KEY op VALUE | KEY (in|notin) "(" list ")"`
    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        let mut token = self.next();
        let negated = token == Token::Bang;
        if negated {
            token = self.next();
        }
        let key = match token {
            Token::Word(key) => key,
            other => {
                return Err(SelectorError::Syntax(format!(
                    "found '{}', expected: identifier",
                    other.text()
                )))
            }
        };
        validate_key(&key)?;
        // `!k` is complete by itself; anything after it is left for the
        // caller to reject as a missing ','.
        if negated {
            return Requirement::new(key, Operator::DoesNotExist, Vec::new());
        }
        if matches!(self.peek(), Token::End | Token::Comma) {
            return Requirement::new(key, Operator::Exists, Vec::new());
        }
        let op = match self.next() {
            Token::Word(w) if w == "in" => Operator::In,
            Token::Word(w) if w == "notin" => Operator::NotIn,
            Token::Equals => Operator::Equals,
            Token::DoubleEquals => Operator::DoubleEquals,
            Token::NotEquals => Operator::NotEquals,
            Token::Greater => Operator::GreaterThan,
            Token::Less => Operator::LessThan,
            other => {
                return Err(SelectorError::Syntax(format!(
                    "found '{}', expected: in, notin, =, ==, !=, gt, lt",
                    other.text()
                )))
            }
        };
        let values = match op {
            Operator::In | Operator::NotIn => self.value_list()?,
            _ => vec![self.exact_value()?],
        };
        Requirement::new(key, op, values)
    }

    /// `"(" [VALUE] ("," [VALUE])* ")"`; an omitted value is the empty one.
    fn value_list(&mut self) -> Result<Vec<String>, SelectorError> {
        match self.next() {
            Token::Open => {}
            other => {
                return Err(SelectorError::Syntax(format!(
                    "found '{}', expected: '('",
                    other.text()
                )))
            }
        }
        let mut values = Vec::new();
        loop {
            let value = match self.peek() {
                Token::Word(_) => match self.next() {
                    Token::Word(w) => w,
                    _ => String::new(),
                },
                Token::Comma | Token::Close => String::new(),
                other => {
                    return Err(SelectorError::Syntax(format!(
                        "found '{}', expected: ',', ')' or identifier",
                        other.text()
                    )))
                }
            };
            values.push(value);
            match self.next() {
                Token::Comma => {}
                Token::Close => return Ok(values),
                other => {
                    return Err(SelectorError::Syntax(format!(
                        "found '{}', expected: ',' or ')'",
                        other.text()
                    )))
                }
            }
        }
    }

    /// The single value after `=`, `==`, `!=`, `>` or `<`; nothing before a
    /// `,` or the end means the empty value (`k=` selects empty labels).
    fn exact_value(&mut self) -> Result<String, SelectorError> {
        match self.peek() {
            Token::End | Token::Comma => Ok(String::new()),
            _ => match self.next() {
                Token::Word(w) => Ok(w),
                other => Err(SelectorError::Syntax(format!(
                    "found '{}', expected: identifier",
                    other.text()
                ))),
            },
        }
    }
}
