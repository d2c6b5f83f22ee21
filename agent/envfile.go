package agent

import (
	"fmt"
	"io"
	"os"
	"strings"
)

// maxEnvFileSize bounds what ReadEnvFile reads, so a wrong path (a device,
// a log file) fails quickly instead of filling memory.
const maxEnvFileSize = 4 << 20

// ReadEnvFile reads a file of environment variables in the style of
// systemd's EnvironmentFile= and returns them as KEY=VALUE strings, in file
// order:
//
//   - one KEY=VALUE per line, with an optional "export " before the key and
//     blanks allowed around the '=';
//   - blank lines and lines starting with # or ; are ignored;
//   - a value in single quotes is taken literally; a value in double quotes
//     understands the escapes \" \\ \n \t \r \$ and \` (and a backslash at
//     the end of a line joins the next); either may span lines;
//   - an unquoted value is taken up to the end of the line, without the
//     trailing blanks.
//
// An error in the contents is a *ConfigError "PATH:LINE: message". Messages
// never contain a value: env files hold secrets. Errors opening or reading
// the file are returned as they are (*fs.PathError).
func ReadEnvFile(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxEnvFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxEnvFileSize {
		return nil, &ConfigError{Path: path, Msg: fmt.Sprintf("env file larger than %d MiB", maxEnvFileSize>>20)}
	}
	return parseEnvFile(path, string(data))
}

// parseEnvFile parses the contents of an env file; see ReadEnvFile.
func parseEnvFile(path, data string) ([]string, error) {
	var vars []string
	data = strings.TrimPrefix(data, "\uFEFF")
	line := 0
	for len(data) > 0 {
		line++
		var text string
		text, data = cutLine(data)
		text = strings.TrimLeft(text, " \t")
		if text == "" || text[0] == '#' || text[0] == ';' {
			continue
		}
		fail := func(format string, args ...any) error {
			return &ConfigError{Path: path, Line: line, Msg: fmt.Sprintf(format, args...)}
		}
		if rest, ok := strings.CutPrefix(text, "export"); ok && rest != "" && (rest[0] == ' ' || rest[0] == '\t') {
			text = strings.TrimLeft(rest, " \t")
		}
		key, value, ok := strings.Cut(text, "=")
		if !ok {
			return nil, fail("expected KEY=VALUE")
		}
		key = strings.TrimRight(key, " \t")
		if key == "" {
			return nil, fail("missing variable name before '='")
		}
		if !validEnvName(key) {
			return nil, fail("invalid variable name: use letters, digits and _, not starting with a digit")
		}
		value = strings.TrimLeft(value, " \t")
		if value != "" && (value[0] == '"' || value[0] == '\'') {
			// The quoted value may run over the following lines: parse it
			// from here on in the rest of the file.
			start := line
			v, after, lines, err := unquote(value + "\n" + data)
			if err != nil {
				return nil, &ConfigError{Path: path, Line: start, Msg: err.Error()}
			}
			line += lines
			var tail string
			tail, data = cutLine(after)
			tail = strings.TrimLeft(tail, " \t")
			if tail != "" && tail[0] != '#' {
				return nil, fail("unexpected text after the closing quote")
			}
			value = v
		} else {
			value = strings.TrimRight(value, " \t")
		}
		if strings.IndexByte(value, 0) >= 0 {
			return nil, fail("value contains a NUL character")
		}
		vars = append(vars, key+"="+value)
	}
	return vars, nil
}

// cutLine splits s after its first line; the line is returned without its
// line ending (\n or \r\n).
func cutLine(s string) (line, rest string) {
	line, rest, _ = strings.Cut(s, "\n")
	return strings.TrimSuffix(line, "\r"), rest
}

// unquote reads the quoted value at the start of s (which starts with ' or
// ") and returns it unquoted, the text after the closing quote and the
// number of line breaks inside the quotes.
func unquote(s string) (value, rest string, lines int, err error) {
	quote := s[0]
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		c := s[i]
		switch {
		case c == quote:
			return b.String(), s[i+1:], lines, nil
		case c == '\n':
			lines++
			b.WriteByte(c)
		case c == '\\' && quote == '"' && i+1 < len(s):
			i++
			switch e := s[i]; e {
			case '"', '\\', '$', '`':
				b.WriteByte(e)
			case 'n':
				b.WriteByte('\n')
			case 't':
				b.WriteByte('\t')
			case 'r':
				b.WriteByte('\r')
			case '\n':
				lines++ // a continued line
			default:
				b.WriteByte('\\')
				b.WriteByte(e)
			}
		default:
			b.WriteByte(c)
		}
	}
	return "", "", 0, fmt.Errorf("unterminated quoted value (missing closing %c)", quote)
}
