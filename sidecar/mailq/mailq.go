// Package mailq reads the local Postfix's queue, for telling an operator how much mail Postfix still
// holds for a project.
//
//  1. List runs `postqueue [-c config_directory] -j`, which prints one JSON object per queued
//     message (Postfix 3.1 and later), and decodes every line.
//  2. Count keeps the messages whose envelope sender a predicate accepts (for a project: its
//     routing table, as the socketmap answers).
//
// postqueue needs no privilege beyond membership in Postfix's setgid group, which it has itself.
// Where Postfix is not installed on this host (Postern in its own container), List returns an error
// wrapping ErrUnavailable.
package mailq

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

// ErrUnavailable is wrapped by List's error when there is no postqueue command to run.
var ErrUnavailable = errors.New("postqueue is not available on this host")

// Options say how to reach Postfix. The zero value asks the default Postfix instance.
type Options struct {
	// Postqueue is the command. Empty means "postqueue", looked up in PATH, then in /usr/sbin and
	// /usr/local/sbin.
	Postqueue string
	// ConfigDir is Postfix's configuration directory (postqueue -c). Empty means Postfix's own.
	ConfigDir string
}

// Message is one queued message as postqueue -j shows it.
type Message struct {
	QueueName   string      `json:"queue_name"`
	QueueID     string      `json:"queue_id"`
	ArrivalTime int64       `json:"arrival_time"`
	MessageSize int64       `json:"message_size"`
	Sender      string      `json:"sender"`
	Recipients  []Recipient `json:"recipients"`
}

// Recipient is one recipient of a queued message.
type Recipient struct {
	Address     string `json:"address"`
	DelayReason string `json:"delay_reason,omitempty"`
}

// List returns every message in Postfix's queue.
func List(ctx context.Context, o Options) ([]Message, error) {
	path, err := command(o.Postqueue)
	if err != nil {
		return nil, err
	}
	args := []string{"-j"}
	if o.ConfigDir != "" {
		args = []string{"-c", o.ConfigDir, "-j"}
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("running %s %s: %w: %s", path, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return Parse(out)
}

// Parse decodes postqueue -j's output: one JSON object a line.
func Parse(out []byte) ([]Message, error) {
	var msgs []Message
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var m Message
		if err := json.Unmarshal(line, &m); err != nil {
			return nil, fmt.Errorf("postqueue -j line %d: %w", n, err)
		}
		msgs = append(msgs, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading postqueue -j: %w", err)
	}
	return msgs, nil
}

// Count returns how many of msgs have an envelope sender match accepts.
func Count(msgs []Message, match func(sender string) bool) int {
	n := 0
	for _, m := range msgs {
		if m.Sender != "" && match(m.Sender) {
			n++
		}
	}
	return n
}

// command finds the postqueue command.
func command(name string) (string, error) {
	if name == "" {
		name = "postqueue"
	}
	if strings.ContainsRune(name, '/') {
		if _, err := exec.LookPath(name); err != nil {
			return "", fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return name, nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin/", "/usr/local/sbin/"} {
		if p, err := exec.LookPath(dir + name); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: %s is not in PATH, /usr/sbin or /usr/local/sbin", ErrUnavailable, name)
}
