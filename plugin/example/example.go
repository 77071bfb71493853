// Package example is a minimal, complete credential provider: it reads each project's credential
// from a JSON file named in the project's configuration. Its binary is
// cmd/postern-credential-example; copy both as the start of a provider of your own.
//
// The flow of one request:
//
//  1. Postern calls Credential with the project's name, mailbox and the "config" map of its
//     record. The "file" key names the JSON file (required).
//  2. The provider reads and parses the file, reusing the last parse while the file's size and
//     modification time are unchanged, unless Postern set ForceRefresh.
//  3. It looks the project up under "projects" and returns its mechanism, username, secret and
//     optional expiry.
//  4. Faults map onto the contract: a missing "file" key or a project absent from the file needs a
//     person (*plugin.NeedsReauthError); an unreadable or half-written file may heal by itself
//     (*plugin.TemporaryError).
//  5. When Postern reports a rejected credential (Rejected), the provider forgets its parse so the
//     next request reads the file again.
//
// The file (keep it mode 0600, owned by the user Postern runs as):
//
//	{
//	  "projects": {
//	    "acme": {"mechanism": "PLAIN", "username": "noreply@acme.example", "secret": "s3cret"},
//	    "globex": {
//	      "mechanism": "XOAUTH2",
//	      "username": "noreply@globex.example",
//	      "secret": "eyJ0eXAiOi...",
//	      "expiry": "2026-05-01T12:00:00Z"
//	    }
//	  }
//	}
//
// The project record in Postern:
//
//	auth:
//	  type: plugin
//	  username: noreply@acme.example
//	  plugin:
//	    provider: file-example   # the name Postern's configuration gives this binary
//	    config:
//	      file: /etc/postern/credentials.json
//
// The provider logs which project it served and how, never a secret.
package example

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/postern/postern/plugin"
)

// ConfigFile is the project configuration key naming the credentials file.
const ConfigFile = "file"

// File is the credentials file's layout.
type File struct {
	Projects map[string]Entry `json:"projects"`
}

// Entry is one project's credential in the file.
type Entry struct {
	// Mechanism is PLAIN, LOGIN or XOAUTH2; empty means PLAIN.
	Mechanism string `json:"mechanism"`
	// Username is the name to sign in with; empty means the project's mailbox.
	Username string `json:"username"`
	// Secret is the password or access token.
	Secret string `json:"secret"`
	// Expiry is when Secret stops working (RFC 3339); absent means never.
	Expiry time.Time `json:"expiry,omitzero"`
}

// FileProvider is a plugin.Provider reading credentials from JSON files. The zero value works.
type FileProvider struct {
	// Log receives one line per request, never a secret. nil discards.
	Log *slog.Logger

	mu    sync.Mutex
	cache map[string]parsed // by file path
}

type parsed struct {
	size    int64
	modTime time.Time
	file    File
}

var _ plugin.Provider = (*FileProvider)(nil)

func (p *FileProvider) log() *slog.Logger {
	if p.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return p.Log
}

// Credential implements plugin.Provider.
func (p *FileProvider) Credential(ctx context.Context, req plugin.Request) (plugin.Credential, error) {
	if err := ctx.Err(); err != nil {
		return plugin.Credential{}, err
	}
	path := req.Config[ConfigFile]
	if path == "" {
		return plugin.Credential{}, &plugin.NeedsReauthError{
			Reason: fmt.Sprintf("project %q: auth.plugin.config has no %q key naming the credentials file", req.Project, ConfigFile),
		}
	}
	f, err := p.load(path, req.ForceRefresh)
	if err != nil {
		return plugin.Credential{}, &plugin.TemporaryError{Reason: err.Error()}
	}
	e, ok := f.Projects[req.Project]
	if !ok {
		return plugin.Credential{}, &plugin.NeedsReauthError{
			Reason: fmt.Sprintf("project %q has no entry in %s", req.Project, path),
		}
	}
	if e.Secret == "" {
		return plugin.Credential{}, &plugin.NeedsReauthError{
			Reason: fmt.Sprintf("project %q has an empty secret in %s", req.Project, path),
		}
	}
	c := plugin.Credential{
		Mechanism: e.Mechanism,
		Username:  e.Username,
		Secret:    plugin.NewSecret(e.Secret),
		Expiry:    e.Expiry,
	}
	if c.Mechanism == "" {
		c.Mechanism = plugin.MechanismPlain
	}
	if c.Username == "" {
		c.Username = req.Username
	}
	attrs := []any{"project", req.Project, "file", path, "mechanism", c.Mechanism,
		"username", c.Username, "force_refresh", req.ForceRefresh}
	if !c.Expiry.IsZero() {
		attrs = append(attrs, "expiry", c.Expiry)
	}
	p.log().Info("credential served", attrs...) // never c.Secret
	return c, nil
}

// Rejected implements plugin.Provider: it forgets the parsed file so the next request reads it.
func (p *FileProvider) Rejected(ctx context.Context, req plugin.RejectedRequest) error {
	path := req.Config[ConfigFile]
	p.mu.Lock()
	delete(p.cache, path)
	p.mu.Unlock()
	p.log().Warn("credential rejected upstream", "project", req.Project, "file", path,
		"mechanism", req.Mechanism, "reply", req.Reply)
	return nil
}

// load returns the parsed file at path, from the cache while the file is unchanged.
func (p *FileProvider) load(path string, force bool) (File, error) {
	info, err := os.Stat(path)
	if err != nil {
		return File{}, fmt.Errorf("reading credentials file: %w", withoutOp(err))
	}
	p.mu.Lock()
	c, ok := p.cache[path]
	p.mu.Unlock()
	if ok && !force && c.size == info.Size() && c.modTime.Equal(info.ModTime()) {
		return c.file, nil
	}

	b, err := os.ReadFile(path)
	if err != nil {
		return File{}, fmt.Errorf("reading credentials file: %w", withoutOp(err))
	}
	var f File
	if err := json.Unmarshal(b, &f); err != nil {
		// A syntax error quotes a character of the input, which may be part of a secret: report
		// only where it is. Type errors name the field, never the value.
		var syn *json.SyntaxError
		if errors.As(err, &syn) {
			return File{}, fmt.Errorf("parsing credentials file %s: invalid JSON at byte %d", path, syn.Offset)
		}
		return File{}, fmt.Errorf("parsing credentials file %s: %w", path, err)
	}
	p.mu.Lock()
	if p.cache == nil {
		p.cache = make(map[string]parsed)
	}
	p.cache[path] = parsed{size: info.Size(), modTime: info.ModTime(), file: f}
	p.mu.Unlock()
	return f, nil
}

// withoutOp drops the operation ("open", "stat") from a *fs.PathError, keeping its path and reason.
func withoutOp(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", pe.Path, pe.Err)
	}
	return err
}
