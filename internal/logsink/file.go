package logsink

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"gopkg.in/natefinch/lumberjack.v2"
)

const (
	// dirMode and fileMode are the modes of a log directory and file the
	// agent creates: readable by the group (adm, a log shipper), not others.
	dirMode  = 0o750
	fileMode = 0o640
	mib      = 1 << 20
)

// OpenFile opens the log file at path for appending, creating its directory
// (0750) and the file (0640, owned by the agent's user) if missing, so that
// a path that cannot be written is an error now rather than lost lines
// later. The returned writer rotates the file when the next write would take
// it past maxSize bytes, gzip-compresses the rotated file in the background
// (path-<UTC time>.log.gz beside it, same mode and owner) and keeps the
// newest maxFiles of them. Rotation works in whole MiB: maxSize is rounded
// up to a multiple of 1 MiB (at least 1 MiB). Each Write must be shorter
// than that; Sink writes at most 64 KiB at a time.
func OpenFile(path string, maxSize int64, maxFiles int) (io.WriteCloser, error) {
	if path == "" {
		return nil, errors.New("log file: empty path")
	}
	if maxSize <= 0 {
		return nil, fmt.Errorf("log file %s: max size %d is not positive", path, maxSize)
	}
	if maxFiles < 1 {
		return nil, fmt.Errorf("log file %s: max files %d is below 1", path, maxFiles)
	}
	dir := filepath.Dir(path)
	if err := mkdirAll(dir); err != nil {
		return nil, fmt.Errorf("log file %s: %w", path, err)
	}
	if err := touch(path); err != nil {
		return nil, fmt.Errorf("log file: %w", err)
	}
	return &lumberjack.Logger{
		Filename:   path,
		MaxSize:    int((maxSize + mib - 1) / mib),
		MaxBackups: maxFiles,
		Compress:   true,
	}, nil
}

// mkdirAll creates dir and its missing parents with dirMode, whatever the
// umask.
func mkdirAll(dir string) error {
	fi, err := os.Stat(dir)
	if err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s is not a directory", dir)
		}
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if parent := filepath.Dir(dir); parent != dir {
		if err := mkdirAll(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, dirMode); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil
		}
		return err
	}
	return os.Chmod(dir, dirMode)
}

// touch opens path for appending, creating it with fileMode if missing, and
// closes it: the rotating writer reopens it, keeping its mode and owner.
func touch(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|os.O_EXCL, fileMode)
	if err == nil {
		if err := f.Chmod(fileMode); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
	if !errors.Is(err, fs.ErrExist) {
		return err
	}
	f, err = os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%s is not a regular file", path)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
