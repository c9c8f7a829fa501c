//! How deep a spec may nest, checked before Starlark parses or compiles it. The
//! parser and compiler recurse once per level of nesting, so a spec nested deeply
//! enough (3,000 brackets, a 5,000-term sum) would overflow the stack and abort the
//! process with no location. These checks refuse it first, naming the file and line.
//!
//! Two passes: one over the tokens, before parsing, bounds what makes the parser
//! recurse (brackets, f-string expressions, chains of unary operators, nested lambdas
//! and conditional expressions, indentation and `elif` chains); one over the parsed
//! tree bounds what makes the compiler recurse (any expression or statement tree, such
//! as a long chain of `+`). Both stop at the limit, so they cannot overflow themselves.

use starlark::syntax::ast::{AstExpr, AstStmt};
use starlark::syntax::{AstModule, Dialect};
use starlark_syntax::codemap::{CodeMap, Pos, Span};
use starlark_syntax::lexer::{Lexer, Token};
use starlark_syntax::syntax::uniplate::Visit;

/// Most levels of nesting the parser may see in one place.
pub const MAX_NESTING: usize = 200;
/// Most levels a parsed expression or statement tree may have.
pub const MAX_TREE_DEPTH: usize = 1000;
/// Stack of the thread that parses and evaluates a spec's top level. It is reserved,
/// not committed: the pages a load does not touch cost nothing. Sized so the deepest
/// spec the limits above accept is far from it, in debug builds too.
pub const EVAL_STACK: usize = 256 << 20;

/// Refuses `source` if some place in it nests more than [`MAX_NESTING`] levels.
/// Lexical errors are left for the parser to report.
pub fn check_source(file: &str, source: &str, dialect: &Dialect) -> Result<(), String> {
    let codemap = CodeMap::new(file.to_string(), source.to_string());
    let mut tokens = Lexer::new(source, dialect, codemap.clone()).peekable();
    let mut nest = Nesting::default();
    let mut prev: Option<Token> = None;
    while let Some(Ok((at, tok, _))) = tokens.next() {
        let next_is_colon = matches!(tokens.peek(), Some(Ok((_, Token::Colon, _))));
        let level = nest.step(&tok, prev.as_ref(), next_is_colon);
        if level > MAX_NESTING {
            let line = codemap.find_line(Pos::new(at as u32)) + 1;
            return Err(format!(
                "{file}:{line}: nested more than {MAX_NESTING} levels deep (brackets, operators, lambdas, conditionals, blocks or elif branches inside one another); split it into smaller parts"
            ));
        }
        if !matches!(tok, Token::Comment(_)) {
            prev = Some(tok);
        }
    }
    Ok(())
}

/// A running estimate of the parser's recursion depth at the current token.
#[derive(Default)]
struct Nesting {
    /// Bracket depth at each open bracket or f-string expression.
    brackets: usize,
    /// Lambdas and conditional-expression `else`s still open, by the bracket depth
    /// they were opened at: a comma or closing bracket at that depth ends them.
    open: Vec<usize>,
    /// Set between `lambda` and its `:`, where commas separate parameters.
    lambda_params: Option<usize>,
    /// Consecutive unary operators (`- - x`, `not not x`).
    unary: usize,
    indent: usize,
    /// `elif` branches so far of the `if` at each indentation level.
    elifs: Vec<usize>,
}

impl Nesting {
    fn step(&mut self, tok: &Token, prev: Option<&Token>, next_is_colon: bool) -> usize {
        let line_start = matches!(
            prev,
            None | Some(Token::Newline | Token::Indent | Token::Dedent)
        );
        self.unary = match tok {
            Token::Minus | Token::Plus | Token::Tilde | Token::Not => self.unary + 1,
            _ => 0,
        };
        match tok {
            Token::OpeningRound
            | Token::OpeningSquare
            | Token::OpeningCurly
            | Token::FStringExprStart => self.brackets += 1,
            Token::ClosingRound
            | Token::ClosingSquare
            | Token::ClosingCurly
            | Token::FStringExprEnd => {
                self.brackets = self.brackets.saturating_sub(1);
                let depth = self.brackets;
                self.open.retain(|&d| d <= depth);
            }
            Token::Comma if self.lambda_params != Some(self.brackets) => {
                let depth = self.brackets;
                self.open.retain(|&d| d < depth);
            }
            Token::Lambda => {
                self.open.push(self.brackets);
                self.lambda_params = Some(self.brackets);
            }
            Token::Colon if self.lambda_params == Some(self.brackets) => {
                self.lambda_params = None;
            }
            Token::Else if !next_is_colon => self.open.push(self.brackets),
            Token::Newline if self.brackets == 0 => {
                self.open.clear();
                self.lambda_params = None;
            }
            Token::Indent => self.indent += 1,
            Token::Dedent => {
                self.indent = self.indent.saturating_sub(1);
                self.elifs.truncate(self.indent + 1);
            }
            Token::If if line_start => self.elif_slot(0),
            Token::Elif => {
                let n = self.elifs.get(self.indent).copied().unwrap_or(0);
                self.elif_slot(n + 1);
            }
            _ => {}
        }
        // A statement at the line start that continues no `if` ends its chain.
        if line_start
            && !matches!(
                tok,
                Token::If
                    | Token::Elif
                    | Token::Else
                    | Token::Newline
                    | Token::Indent
                    | Token::Dedent
                    | Token::Comment(_)
            )
        {
            self.elif_slot(0);
        }
        self.brackets
            + self.open.len()
            + self.unary
            + self.indent
            + self.elifs.iter().sum::<usize>()
    }

    fn elif_slot(&mut self, n: usize) {
        if self.elifs.len() <= self.indent {
            self.elifs.resize(self.indent + 1, 0);
        }
        self.elifs[self.indent] = n;
    }
}

/// Refuses `ast` if its statement and expression tree is deeper than
/// [`MAX_TREE_DEPTH`]; the error names the line where the limit is crossed.
pub fn check_tree(ast: &AstModule) -> Result<(), String> {
    match stmt(ast.statement(), 0) {
        Ok(()) => Ok(()),
        Err(span) => {
            let r = ast.file_span(span).resolve();
            Err(format!(
                "{}:{}: an expression or block nested more than {MAX_TREE_DEPTH} levels deep (a chain of thousands of operators?); split it into smaller parts",
                r.file,
                r.span.begin.line + 1
            ))
        }
    }
}

fn stmt(s: &AstStmt, depth: usize) -> Result<(), Span> {
    if depth > MAX_TREE_DEPTH {
        return Err(s.span);
    }
    Visit::Stmt(s).visit_children_err(|c| child(c, depth + 1))
}

fn expr(e: &AstExpr, depth: usize) -> Result<(), Span> {
    if depth > MAX_TREE_DEPTH {
        return Err(e.span);
    }
    Visit::Expr(e).visit_children_err(|c| child(c, depth + 1))
}

fn child(c: Visit<'_, starlark::syntax::ast::AstNoPayload>, depth: usize) -> Result<(), Span> {
    match c {
        Visit::Stmt(s) => stmt(s, depth),
        Visit::Expr(e) => expr(e, depth),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(src: &str) -> Result<(), String> {
        check_source("x.star", src, &crate::loader::dialect())
    }

    #[test]
    fn ordinary_specs_pass() {
        let long_list = format!("x = [{}]\n", vec!["-1"; 5000].join(", "));
        let lambdas = format!("x = [{}]\n", vec!["lambda a, b: a"; 500].join(", "));
        let conds = format!("x = [{}]\n", vec!["1 if True else 2"; 500].join(", "));
        let mut elifs = String::from("def f(x):\n");
        for i in 0..500 {
            elifs.push_str(&format!("    if x == {i}:\n        return {i}\n"));
        }
        for src in [long_list, lambdas, conds, elifs] {
            source(&src).unwrap();
        }
        source("x = f\"{[1, {'a': (2)}]}\"\n").unwrap();
    }

    #[test]
    fn deep_nesting_is_refused_with_its_line() {
        let deep = |open: &str, close: &str, n: usize| {
            format!("a = 1\nx = {}1{}\n", open.repeat(n), close.repeat(n))
        };
        for src in [
            deep("[", "]", 3000),
            deep("(", ")", 100_000),
            deep("{1: ", "}", 300),
            deep("-", "", 300),
            deep("not ", "", 300),
            deep("lambda: ", "", 300),
            deep("1 if True else ", "", 300),
            deep("f\"{", "}\"", 300),
        ] {
            let e = source(&src).unwrap_err();
            assert!(e.starts_with("x.star:2: nested more than 200"), "{e}");
        }
        let mut elifs = String::from("if x == 0:\n    pass\n");
        for i in 1..300 {
            elifs.push_str(&format!("elif x == {i}:\n    pass\n"));
        }
        assert!(source(&elifs).unwrap_err().contains("nested more than"));
        let mut blocks = String::new();
        for i in 0..300 {
            blocks.push_str(&format!("{}if True:\n", "  ".repeat(i)));
        }
        assert!(source(&blocks).unwrap_err().contains("nested more than"));
    }

    /// Runs `f` on a thread with the stack a load has.
    fn on_eval_stack(f: impl FnOnce() + Send + 'static) {
        std::thread::Builder::new()
            .stack_size(EVAL_STACK)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn deep_trees_are_refused_with_their_line() {
        on_eval_stack(deep_trees);
    }

    fn deep_trees() {
        let sum = format!("a = 1\nx = {}\n", vec!["1"; 5000].join(" + "));
        let ast = AstModule::parse("x.star", sum, &crate::loader::dialect()).unwrap();
        let e = check_tree(&ast).unwrap_err();
        assert!(
            e.starts_with("x.star:2: an expression or block nested more than 1000"),
            "{e}"
        );
        let ok = format!("x = {}\n", vec!["1"; 900].join(" + "));
        let ast = AstModule::parse("x.star", ok, &crate::loader::dialect()).unwrap();
        check_tree(&ast).unwrap();
    }
}
