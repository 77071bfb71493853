package sidecar

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// listen opens addr: a unix socket when it is a path (starts with '/' or "unix:"), else a
// loopback TCP address. Unix sockets get the configured group and mode so that Postfix's delivery
// agents, which run as the postfix user, can connect, and nobody else can.
func listen(addr, group string, mode fs.FileMode) (net.Listener, error) {
	path, isUnix := strings.CutPrefix(addr, "unix:")
	if !isUnix && !strings.HasPrefix(addr, "/") {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("listening on %s: %w", addr, err)
		}
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return nil, fmt.Errorf("listening on %s: only loopback addresses are allowed", addr)
		}
		return net.Listen("tcp", addr)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating socket directory for %s: %w", path, err)
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	if err := setSocketAccess(path, group, mode); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// removeStaleSocket removes a socket left by a previous run, but refuses to remove anything that
// is not a socket, and refuses when another process still answers on it.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("checking %s: %w", path, err)
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket: move it away or choose another path", path)
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return fmt.Errorf("%s is in use by another process: is another postern running?", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("removing stale socket %s: %w", path, err)
	}
	return nil
}

func setSocketAccess(path, group string, mode fs.FileMode) error {
	if group != "" {
		g, err := user.LookupGroup(group)
		if err != nil {
			return fmt.Errorf("socket group %q for %s: %w (set listen.socket_group to the group Postfix's delivery agents run as, usually postfix)", group, path, err)
		}
		gid, _ := strconv.Atoi(g.Gid)
		if err := os.Lchown(path, -1, gid); err != nil && !errors.Is(err, syscall.EPERM) {
			return fmt.Errorf("setting group of %s: %w", path, err)
		}
	}
	if err := os.Chmod(path, mode); err != nil {
		return fmt.Errorf("setting mode of %s: %w", path, err)
	}
	return nil
}
