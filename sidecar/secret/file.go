package secret

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// LoadOrCreateFile reads a secret file that only its owner may read, creating it first with the
// bytes make returns when it does not exist. what names the file in errors ("the sign-in key
// file"). The new file is written beside path and linked into place, so it never overwrites one
// another process created meanwhile; run as root, it is given the owner of its directory, so a
// command run as root does not lock out a Postern running as its own user.
func LoadOrCreateFile(path, what string, make func() ([]byte, error)) ([]byte, error) {
	b, err := readPrivate(path, what)
	if !errors.Is(err, fs.ErrNotExist) {
		return b, err
	}
	content, err := make()
	if err != nil {
		return nil, fmt.Errorf("creating %s %s: %w", what, path, err)
	}
	if err := createPrivate(path, content); err != nil {
		return nil, fmt.Errorf("creating %s %s: %w", what, path, err)
	}
	return readPrivate(path, what)
}

func readPrivate(path, what string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", what, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s %s is not a regular file", what, path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%s %s is readable by group or others (mode %04o): chmod 600 %s", what, path, perm, path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", what, err)
	}
	return b, nil
}

func createPrivate(path string, content []byte) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return err
	}
	if err := chownToDir(f, dir); err != nil {
		return err
	}
	if _, err := f.Write(content); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := os.Link(f.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return nil
}

// chownToDir gives f the owner of dir when this process runs as root.
func chownToDir(f *os.File, dir string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || (st.Uid == 0 && st.Gid == 0) {
		return nil
	}
	return f.Chown(int(st.Uid), int(st.Gid))
}
