package core

import (
	"bytes"
	"encoding/binary"
	"slices"
	"strings"
)

// Read/write routing (route_reads) asks, at the first message of a
// transaction, whether the client's request can only read and so may go to
// a replica. ReadOnlyRequest answers from the messages buffered, and says
// no whenever it is unsure: the primary serves everything a replica might
// not.
//
// Statements are read with a lexer that follows PostgreSQL's rules
// (comments nested, strings with their escapes, dollar quotes, quoted
// identifiers), not with PostgreSQL's own parser through cgo
// (pg_query_go): that measured 13.8 µs and 42 allocations a parse for
// pgbench's SELECT, about what pgmux spends on a whole transaction, its
// scanner alone 2.8 µs, and cgo would leave the portable builds and the
// static image without it. The decision needs only which words a statement
// has and where, not its tree.

// Statements gives the text of a client's named statements (the
// prepared-statement mapping's), for requests that Bind one prepared
// earlier.
type Statements interface {
	Query(name []byte) ([]byte, bool)
}

// ReadOnlyRequest reports whether the request that begins buf, whole
// messages as the client sent them, can only read:
//   - a simple Query of one SELECT (or WITH … SELECT) that has no locking
//     clause, no INTO, writes nothing in a WITH and calls no function but
//     ones known to be read-only;
//   - a Query that opens a READ ONLY transaction (BEGIN, START TRANSACTION);
//   - extended-protocol messages up to a Sync that is in buf, whose every
//     Parse is of such a SELECT and whose every Bind is of a statement
//     parsed there or, in stmts (nil: none known), one that is such a
//     SELECT.
//
// It allocates nothing.
func ReadOnlyRequest(buf []byte, stmts Statements) bool {
	typ, body, _, ok := nextMessage(buf)
	if !ok {
		return false
	}
	if typ == 'Q' {
		text := cstring(body)
		return readOnly(text) || opensReadOnly(text)
	}
	var parsed [4][]byte // names this request parses, each read-only
	nparsed := 0
	for len(buf) > 0 {
		typ, body, more, ok := nextMessage(buf)
		if !ok {
			return false
		}
		switch typ {
		case 'S':
			return true
		case 'P': // name, NUL, query
			i := bytes.IndexByte(body, 0)
			if i < 0 || !readOnly(cstring(body[i+1:])) {
				return false
			}
			if i > 0 {
				if nparsed == len(parsed) {
					return false // more than a request of reads usually holds: unsure
				}
				parsed[nparsed] = body[:i]
				nparsed++
			}
		case 'B': // portal, NUL, statement, NUL, …
			i := bytes.IndexByte(body, 0)
			if i < 0 {
				return false
			}
			name := cstring(body[i+1:])
			if len(name) > 0 && !slices.ContainsFunc(parsed[:nparsed], func(p []byte) bool { return bytes.Equal(p, name) }) {
				// A statement prepared earlier (unnamed: the Parse read
				// above).
				if stmts == nil {
					return false
				}
				q, ok := stmts.Query(name)
				if !ok || !readOnly(cstring(q)) {
					return false
				}
			}
		case 'D', 'E', 'H':
		default:
			return false // a Close, a Query: unsure
		}
		buf = more
	}
	return false // no Sync in sight
}

// nextMessage splits the whole message at the start of buf.
func nextMessage(buf []byte) (typ byte, body, rest []byte, ok bool) {
	if len(buf) < 5 {
		return 0, nil, nil, false
	}
	n := int(binary.BigEndian.Uint32(buf[1:]))
	if n < 4 || 1+n > len(buf) {
		return 0, nil, nil, false
	}
	return buf[0], buf[5 : 1+n], buf[1+n:], true
}

// cstring is b up to its first NUL.
func cstring(b []byte) []byte {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return b[:i]
	}
	return b
}

// ReadOnlyStatement reports whether text is one statement that can only
// read: a SELECT, or WITH … SELECT whose parts are all SELECTs, with no
// FOR UPDATE/SHARE, no INTO, and no call of a function not known to be
// read-only.
func ReadOnlyStatement(text string) bool { return readOnly([]byte(text)) }

func readOnly(text []byte) bool {
	lx := lexer{s: text}
	var prev tokKind
	var prevWord [maxWord]byte
	prevLen := -1 // the previous token's word, if it was one
	n, ended := 0, false
	for {
		t, ok := lx.next()
		if !ok {
			return false
		}
		if t == tokEnd {
			return n > 0
		}
		if ended {
			return false // more than one statement
		}
		w := lx.buf[:lx.n]
		switch {
		case n == 0 && (t != tokWord || string(w) != "select" && string(w) != "with"):
			return false
		case t == tokSemicolon:
			ended = true
		case t == tokWord && writeWords[string(w)]:
			return false
		case t == tokWord && prev == tokWord && string(prevWord[:prevLen]) == "for" && lockWords[string(w)]:
			return false
		case t == tokOpen && prev == tokWord && !syntaxWords[string(prevWord[:prevLen])] && !readOnlyFuncs[string(prevWord[:prevLen])]:
			return false // a function that may write (or a user's: unsure)
		}
		prev, prevLen = t, copy(prevWord[:], w)
		n++
	}
}

// OpensReadOnly reports whether text is a BEGIN or START TRANSACTION whose
// modes include READ ONLY, alone.
func OpensReadOnly(text string) bool { return opensReadOnly([]byte(text)) }

func opensReadOnly(text []byte) bool {
	lx := lexer{s: text}
	var prev [maxWord]byte
	prevLen := 0
	n, ended, readOnly := 0, false, false
	for {
		t, ok := lx.next()
		if !ok {
			return false
		}
		if t == tokEnd {
			return readOnly
		}
		if ended {
			return false
		}
		w := lx.buf[:lx.n]
		switch {
		case n == 0 && !(t == tokWord && (string(w) == "begin" || string(w) == "start")):
			return false
		case t == tokSemicolon:
			ended = true
		case t == tokWord && string(prev[:prevLen]) == "read" && string(w) == "only":
			readOnly = true
		case t == tokWord && string(prev[:prevLen]) == "read" && string(w) == "write":
			return false
		}
		prevLen = copy(prev[:], w)
		n++
	}
}

// writeWords make a statement one that may write, wherever they stand
// (outside strings and quoted names).
var writeWords = wordSet("insert update delete merge into truncate copy call do lock nextval setval")

// lockWords follow FOR in a locking clause.
var lockWords = wordSet("update share no key")

// syntaxWords are keywords that take parentheses and call nothing.
var syntaxWords = wordSet(`select with as in any all some exists cast values array row and or not on using where
	from join over filter within partition by order group having case when then else end between is like ilike
	similar lateral distinct union intersect except limit offset fetch interval extract position overlay substring
	trim coalesce nullif greatest least collate escape asc desc nulls first last`)

// readOnlyFuncs are functions known to read only: aggregates, window
// functions and common scalar ones.
var readOnlyFuncs = wordSet(`count sum avg min max bool_and bool_or every array_agg string_agg json_agg jsonb_agg
	json_object_agg jsonb_object_agg row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value
	last_value nth_value now current_timestamp current_date statement_timestamp transaction_timestamp clock_timestamp
	date_trunc date_part age to_char to_date to_timestamp to_number make_date make_timestamp lower upper length
	char_length octet_length abs round ceil ceiling floor trunc mod power sqrt ln log exp sign random concat concat_ws
	format left right lpad rpad ltrim rtrim btrim replace split_part strpos starts_with md5 encode decode
	regexp_replace regexp_match regexp_matches array_length array_position unnest cardinality generate_series
	json_build_object jsonb_build_object json_build_array jsonb_build_array to_json to_jsonb row_to_json
	jsonb_set jsonb_extract_path jsonb_extract_path_text json_extract_path_text jsonb_array_elements
	json_array_elements jsonb_each json_each jsonb_typeof jsonb_array_length pg_is_in_recovery
	pg_last_xact_replay_timestamp version current_setting int4 int8 text numeric float8 bool date timestamp timestamptz
	uuid`)

func wordSet(s string) map[string]bool {
	m := map[string]bool{}
	for _, w := range strings.Fields(s) {
		m[w] = true
	}
	return m
}

type tokKind uint8

const (
	tokEnd       tokKind = iota // no more
	tokWord                     // a keyword or unquoted name (lexer.buf, lower-cased)
	tokQuoted                   // a "quoted" name: never a keyword
	tokOpen                     // (
	tokSemicolon                // ;
	tokOther                    // literals, operators, parameters, the rest
)

// maxWord is the longest word kept whole: a longer one is cut, which makes
// it no keyword and no known function.
const maxWord = 63

// lexer reads text's tokens as PostgreSQL's lexer does, for what the
// routing needs: comments skipped, literals and quoted names whole.
type lexer struct {
	s   []byte
	i   int
	buf [maxWord]byte // the last tokWord, lower-cased: buf[:n]
	n   int
}

// next returns the next token; false when the text cannot be read to the
// end (an open comment, string or quote).
func (l *lexer) next() (tokKind, bool) {
	s := l.s
	for l.i < len(s) {
		i := l.i
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			l.i++
		case c == '-' && i+1 < len(s) && s[i+1] == '-':
			for l.i < len(s) && s[l.i] != '\n' {
				l.i++
			}
		case c == '/' && i+1 < len(s) && s[i+1] == '*':
			depth := 0
			for {
				if i+1 >= len(s) {
					return 0, false
				}
				switch {
				case s[i] == '/' && s[i+1] == '*':
					depth++
					i += 2
				case s[i] == '*' && s[i+1] == '/':
					depth--
					i += 2
				default:
					i++
					continue
				}
				if depth == 0 {
					break
				}
			}
			l.i = i
		case c == '\'':
			end, ok := endString(s, i, false)
			if !ok {
				return 0, false
			}
			l.i = end
			return tokOther, true
		case (c == 'e' || c == 'E') && i+1 < len(s) && s[i+1] == '\'':
			end, ok := endString(s, i+1, true)
			if !ok {
				return 0, false
			}
			l.i = end
			return tokOther, true
		case c == '"':
			j := i + 1
			for {
				k := bytes.IndexByte(s[j:], '"')
				if k < 0 {
					return 0, false
				}
				j += k + 1
				if j < len(s) && s[j] == '"' {
					j++ // "" inside
					continue
				}
				break
			}
			l.i = j
			return tokQuoted, true
		case c == '$' && i+1 < len(s) && (s[i+1] == '$' || isIdentStart(s[i+1])):
			j := i + 1
			for j < len(s) && isIdentChar(s[j]) && s[j] != '$' {
				j++
			}
			if j >= len(s) || s[j] != '$' {
				l.i = j // not a dollar quote: an operator, then a name
				return tokOther, true
			}
			tag := s[i : j+1]
			k := bytes.Index(s[j+1:], tag)
			if k < 0 {
				return 0, false
			}
			l.i = j + 1 + k + len(tag)
			return tokOther, true
		case isIdentStart(c):
			j := i + 1
			for j < len(s) && isIdentChar(s[j]) {
				j++
			}
			n := 0
			for k := i; k < j && n < maxWord; k++ {
				b := s[k]
				if b >= 'A' && b <= 'Z' {
					b += 'a' - 'A'
				}
				l.buf[n] = b
				n++
			}
			if j-i > maxWord {
				n = maxWord // cut: no keyword is this long
			}
			l.n, l.i = n, j
			return tokWord, true
		case c == '(':
			l.i++
			return tokOpen, true
		case c == ';':
			l.i++
			return tokSemicolon, true
		default:
			l.i++
			return tokOther, true
		}
	}
	return tokEnd, true
}

// endString returns where the string literal whose quote is at i ends:
// ” is a quote inside, and with backslashes (E'…') so is \'.
func endString(s []byte, i int, backslashes bool) (int, bool) {
	for j := i + 1; j < len(s); j++ {
		switch {
		case backslashes && s[j] == '\\':
			j++
		case s[j] == '\'':
			if j+1 < len(s) && s[j+1] == '\'' {
				j++
				continue
			}
			return j + 1, true
		}
	}
	return 0, false
}

func isIdentStart(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c >= 0x80
}

func isIdentChar(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' || c == '$' }
