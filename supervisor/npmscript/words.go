package npmscript

import (
	"strings"
)

// This file is a deliberately small reader of POSIX sh syntax: it accepts exactly one simple
// command made of words (literal text, '…', "…", backslash escapes, $NAME, ${NAME},
// ${NAME-word}, ${NAME:-word}) with optional leading NAME=value assignments, and reports
// anything else (operators, redirections, substitutions, globs, several lines, …) as a
// reason to leave the line to sh. It is one left-to-right pass, without recursion, and
// never fails on any input: the worst answer is "run it under sh".

// part is one piece of a word: literal text or a parameter expansion.
type part struct {
	param  bool   // a parameter expansion; otherwise literal text
	text   string // the literal text, or the parameter's name
	quoted bool   // inside quotes or escaped: never split or globbed
	op     string // "", "-" or ":-"
	dflt   string // the word after op (plain literal text)
}

// word is one shell word before expansion.
type word struct {
	parts    []part
	quotes   bool // it had quotes or escapes, so it stays a field even when empty
	from, to int  // while lexing: the word's parts in the shared slice
}

// special are the bytes that end a run of plain text outside quotes.
const special = " \t\n\\'\"$|&;<>()`*?[#~"

// lex splits line into words. why is non-empty when the line is not one simple command this
// reader understands; the words are then meaningless.
func lex(line string) (words []word, why string) {
	if strings.IndexByte(line, 0) >= 0 {
		return nil, "a NUL byte" // no exec can pass it; npm fails the same way
	}
	// All words' parts live in one slice (a word's are contiguous), so a long line costs
	// a few growing slices, not one per word.
	var all []part
	var cur *word
	start := func() {
		if cur == nil {
			words = append(words, word{from: len(all), to: len(all)})
			cur = &words[len(words)-1]
		}
	}
	add := func(p part) {
		all = append(all, p)
		cur.to = len(all)
	}
	defer func() {
		for i := range words {
			words[i].parts = all[words[i].from:words[i].to:words[i].to]
		}
	}()
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch c {
		case ' ', '\t':
			cur = nil
		case '\n':
			return nil, "several lines"
		case '\\':
			if i+1 == len(line) {
				return nil, "a trailing backslash"
			}
			i++
			if line[i] == '\n' { // line continuation
				continue
			}
			start()
			cur.quotes = true
			add(part{text: line[i : i+1], quoted: true})
		case '\'':
			end := strings.IndexByte(line[i+1:], '\'')
			if end < 0 {
				return nil, "an unterminated quote"
			}
			start()
			cur.quotes = true
			add(part{text: line[i+1 : i+1+end], quoted: true})
			i += 1 + end
		case '"':
			start()
			cur.quotes = true
			var lit strings.Builder
			i++
			for ; i < len(line) && line[i] != '"'; i++ {
				switch line[i] {
				case '\\':
					if i+1 < len(line) && strings.IndexByte("$`\"\\\n", line[i+1]) >= 0 {
						i++
						if line[i] != '\n' {
							lit.WriteByte(line[i])
						}
					} else {
						lit.WriteByte('\\')
					}
				case '`':
					return nil, "a command substitution"
				case '$':
					p, n, why := param(line[i:], true)
					if why != "" {
						return nil, why
					}
					if !p.param {
						lit.WriteByte('$')
						continue
					}
					add(part{text: lit.String(), quoted: true})
					lit.Reset()
					add(p)
					i += n - 1
				default:
					lit.WriteByte(line[i])
				}
			}
			if i == len(line) {
				return nil, "an unterminated quote"
			}
			add(part{text: lit.String(), quoted: true})
		case '$':
			p, n, why := param(line[i:], false)
			if why != "" {
				return nil, why
			}
			start()
			if !p.param {
				add(part{text: "$"})
				continue
			}
			add(p)
			i += n - 1
		case '|', '&', ';', '<', '>', '(', ')':
			op := line[i : i+1]
			if i+1 < len(line) && line[i+1] == c && (c == '|' || c == '&' || c == ';' || c == '<' || c == '>') {
				op = line[i : i+2]
			}
			return nil, "the operator " + op
		case '`':
			return nil, "a command substitution"
		case '*', '?', '[':
			return nil, "the glob character " + string(c)
		case '~':
			return nil, "a tilde"
		case '#':
			if cur == nil {
				return nil, "a comment"
			}
			add(part{text: "#"})
		default:
			j := i + 1
			for j < len(line) && strings.IndexByte(special, line[j]) < 0 {
				j++
			}
			start()
			add(part{text: line[i:j]})
			i = j - 1
		}
	}
	return words, ""
}

// param reads the expansion that s starts with ('$'). It returns the part and its length, a
// literal (p.param false) when sh would keep the '$' as text, or why it is left to sh.
func param(s string, quoted bool) (p part, n int, why string) {
	if len(s) < 2 {
		return part{}, 1, ""
	}
	c := s[1]
	switch {
	case isNameStart(c):
		j := 2
		for j < len(s) && isName(s[j]) {
			j++
		}
		return part{param: true, text: s[1:j], quoted: quoted}, j, ""
	case c == '{':
		j := 2
		if j == len(s) || !isNameStart(s[j]) {
			return part{}, 0, "a ${…} form other than ${NAME}, ${NAME-word}, ${NAME:-word}"
		}
		for j < len(s) && isName(s[j]) {
			j++
		}
		p = part{param: true, text: s[2:j], quoted: quoted}
		switch {
		case strings.HasPrefix(s[j:], "}"):
			return p, j + 1, ""
		case strings.HasPrefix(s[j:], ":-"):
			p.op = ":-"
		case strings.HasPrefix(s[j:], "-"):
			p.op = "-"
		default:
			return part{}, 0, "a ${…} form other than ${NAME}, ${NAME-word}, ${NAME:-word}"
		}
		j += len(p.op)
		end := strings.IndexByte(s[j:], '}')
		if end < 0 {
			return part{}, 0, "an unterminated ${"
		}
		p.dflt = s[j : j+end]
		if strings.ContainsAny(p.dflt, "\\'\"$`{~\n") {
			return part{}, 0, "a ${NAME:-word} whose word is not plain text"
		}
		return p, j + end + 1, ""
	case c == '(':
		return part{}, 0, "a command substitution"
	case isDigit(c) || strings.IndexByte("@*#?-$!", c) >= 0:
		return part{}, 0, "the special parameter $" + string(c)
	}
	return part{}, 1, ""
}

func isNameStart(c byte) bool { return c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }
func isDigit(c byte) bool     { return '0' <= c && c <= '9' }
func isName(c byte) bool      { return isNameStart(c) || isDigit(c) }

// assignment reports whether w is a NAME=value assignment (as the first words of a simple
// command are), returning the name and the word of the value.
func (w word) assignment() (name string, value word, ok bool) {
	if len(w.parts) == 0 || w.parts[0].param || w.parts[0].quoted {
		return "", word{}, false
	}
	first := w.parts[0].text
	eq := strings.IndexByte(first, '=')
	if eq < 1 || !isNameStart(first[0]) {
		return "", word{}, false
	}
	for i := 1; i < eq; i++ {
		if !isName(first[i]) {
			return "", word{}, false
		}
	}
	value = word{quotes: w.quotes}
	if rest := first[eq+1:]; rest != "" {
		value.parts = append(value.parts, part{text: rest})
	}
	value.parts = append(value.parts, w.parts[1:]...)
	return first[:eq], value, true
}

// expand expands w as sh does with lookup for variables. field reports whether the word
// gives a field at all (an unquoted expansion that is empty gives none). split is true when
// the word is a command word (field splitting and pathname expansion apply) and why is
// non-empty when they would change the result, so only sh can give it.
func (w word) expand(lookup func(string) (string, bool), split bool) (s string, field bool, why string) {
	var b strings.Builder
	for _, p := range w.parts {
		if !p.param {
			b.WriteString(p.text)
			continue
		}
		v, set := lookup(p.text)
		switch {
		case p.op == "-" && !set, p.op == ":-" && v == "":
			v = p.dflt
		}
		if split && !p.quoted && strings.ContainsAny(v, " \t\n*?[") {
			return "", false, "$" + p.text + " would be split or globbed"
		}
		b.WriteString(v)
	}
	s = b.String()
	return s, s != "" || w.quotes, ""
}

// reserved are sh's reserved words (and bash's), which start compound commands.
var reserved = map[string]bool{
	"!": true, "{": true, "}": true, "case": true, "do": true, "done": true, "elif": true,
	"else": true, "esac": true, "fi": true, "for": true, "if": true, "in": true, "then": true,
	"until": true, "while": true, "[[": true, "]]": true, "function": true, "select": true,
}

// builtins are the commands sh runs itself rather than from PATH (dash's and bash's common
// ones), so exec'ing a file of that name would not do the same thing.
var builtins = map[string]bool{
	".": true, ":": true, "[": true, "alias": true, "bg": true, "break": true, "cd": true,
	"command": true, "continue": true, "echo": true, "eval": true, "exec": true, "exit": true,
	"export": true, "false": true, "fc": true, "fg": true, "getopts": true, "hash": true,
	"jobs": true, "kill": true, "local": true, "printf": true, "pwd": true, "read": true,
	"readonly": true, "return": true, "set": true, "shift": true, "source": true, "test": true,
	"times": true, "trap": true, "true": true, "type": true, "ulimit": true, "umask": true,
	"unalias": true, "unset": true, "wait": true,
}

// simple is one simple command after expansion.
type simple struct {
	assigns []string // NAME=value, in order
	argv    []string
}

// parseSimple reads line as sh would run it with the variables of lookup, when it is one
// simple command this reader can expand exactly; otherwise why says what needs sh.
func parseSimple(line string, lookup func(string) (string, bool)) (cmd simple, why string) {
	words, why := lex(line)
	if why != "" {
		return simple{}, why
	}
	// Assignments are expanded left to right, each seeing the ones before it (as dash and
	// bash do); the command's words are expanded with the variables as they were.
	assigned := map[string]string{}
	withAssigned := func(name string) (string, bool) {
		if v, ok := assigned[name]; ok {
			return v, true
		}
		return lookup(name)
	}
	i := 0
	for ; i < len(words); i++ {
		name, value, ok := words[i].assignment()
		if !ok {
			break
		}
		if name == "PATH" || name == "IFS" {
			return simple{}, "an assignment to " + name
		}
		v, _, why := value.expand(withAssigned, false)
		if why != "" {
			return simple{}, why
		}
		assigned[name] = v
		cmd.assigns = append(cmd.assigns, name+"="+v)
	}
	if i < len(words) && len(words[i].parts) == 1 && !words[i].quotes && reserved[words[i].parts[0].text] {
		return simple{}, "the reserved word " + words[i].parts[0].text
	}
	for ; i < len(words); i++ {
		s, field, why := words[i].expand(lookup, true)
		if why != "" {
			return simple{}, why
		}
		if field {
			cmd.argv = append(cmd.argv, s)
		}
	}
	if len(cmd.argv) > 0 && cmd.argv[0] == "exec" && len(cmd.assigns) == 0 &&
		len(cmd.argv) > 1 && !strings.HasPrefix(cmd.argv[1], "-") {
		cmd.argv = cmd.argv[1:] // exec replaces sh with the command: the same as running it directly
	}
	switch {
	case len(cmd.argv) == 0:
		return simple{}, "no command"
	case builtins[cmd.argv[0]]:
		return simple{}, "the shell builtin " + cmd.argv[0]
	}
	return cmd, ""
}

// quote returns s as one sh word, the way npm quotes the arguments it appends to a script
// (@npmcli/promise-spawn's escape.sh).
func quote(s string) string {
	if s == "" {
		return "''"
	}
	if !strings.ContainsAny(s, "\t\n\r \"#$&'()*;<>?\\`|~") {
		return s
	}
	r := "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
	// npm's clean-ups of the result: drop leading '' pairs (unless that is all), and the
	// empty quotes after an escaped quote that ends the string.
	for strings.HasPrefix(r, "''") && len(r) > 2 {
		r = r[2:]
	}
	return strings.ReplaceAll(r, `\'''`, `\'`)
}
