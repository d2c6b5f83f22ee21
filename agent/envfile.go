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

// parseEnvFile parses the contents of an env file; see ReadEnvFile. It
// reads data once, front to back: a quoted value that spans lines is read
// in place, never copied with the rest of the file.
func parseEnvFile(path, data string) ([]string, error) {
	var vars []string
	data = strings.TrimPrefix(data, "\uFEFF")
	line := 0
	for pos := 0; pos < len(data); {
		line++
		text, next := lineAt(data, pos)
		end := pos + len(text) // text is data[pos:end]
		pos = next
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
			// The quoted value may run over the following lines.
			start := line
			v, after, lines, err := unquote(data, end-len(value))
			if err != nil {
				return nil, &ConfigError{Path: path, Line: start, Msg: err.Error()}
			}
			line += lines
			var tail string
			tail, pos = lineAt(data, after)
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

// lineAt returns the line of data that starts at offset pos, without its
// line ending (\n or \r\n), and the offset of the next line.
func lineAt(data string, pos int) (line string, next int) {
	n := strings.IndexByte(data[pos:], '\n')
	if n < 0 {
		return strings.TrimSuffix(data[pos:], "\r"), len(data)
	}
	return strings.TrimSuffix(data[pos:pos+n], "\r"), pos + n + 1
}

// unquote reads the quoted value that starts at offset pos of data (with '
// or ") and returns it unquoted, the offset after the closing quote and
// the number of line breaks inside the quotes. A line break inside the
// quotes is kept as \n, also when the file has \r\n line endings.
func unquote(data string, pos int) (value string, after, lines int, err error) {
	quote := data[pos]
	var b strings.Builder
	for i := pos + 1; i < len(data); i++ {
		c := data[i]
		switch {
		case c == quote:
			return b.String(), i + 1, lines, nil
		case c == '\r' && i+1 < len(data) && data[i+1] == '\n':
			// A \r\n line break: the \n is next.
		case c == '\n':
			lines++
			b.WriteByte(c)
		case c == '\\' && quote == '"' && i+1 < len(data):
			i++
			switch e := data[i]; e {
			case '"', '\\', '$', '`':
				b.WriteByte(e)
			case 'n':
				b.WriteByte('\n')
			case 't':
				b.WriteByte('\t')
			case 'r':
				b.WriteByte('\r')
			case '\n':
				lines++ // a continued line: the line break is dropped
			case '\r':
				if i+1 < len(data) && data[i+1] == '\n' {
					i++
					lines++ // a continued line, \r\n
				} else {
					b.WriteString("\\\r")
				}
			default:
				b.WriteByte('\\')
				b.WriteByte(e)
			}
		default:
			b.WriteByte(c)
		}
	}
	return "", 0, 0, fmt.Errorf("unterminated quoted value (missing closing %c)", quote)
}
