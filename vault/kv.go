package vault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/api"
)

// Metadata is what KV v2 keeps about a path besides its data.
type Metadata struct {
	// CurrentVersion is the newest version written (deleted or not); 0 if none.
	CurrentVersion int
	// OldestVersion is the oldest version still kept.
	OldestVersion int
	// Live says the current version can be read: it is neither deleted nor destroyed.
	Live    bool
	Created time.Time
	Updated time.Time
	// Versions holds the versions Vault still keeps.
	Versions map[int]VersionInfo
}

// VersionInfo describes one version of a path.
type VersionInfo struct {
	Created time.Time
	// Deleted is when the version was (or will be) deleted; zero if it is not.
	Deleted   time.Time
	Destroyed bool
}

// Read returns the current version of the secret at path (relative to the mount) and its version
// number. Numbers in data are json.Number. A path that does not exist, or whose current version
// was deleted or destroyed, gives ErrNotFound; in the second case the version returned is that
// deleted version, which a check-and-set write must name to write over it.
func (c *Client) Read(ctx context.Context, path string) (map[string]any, int, error) {
	full := c.mount + "/data/" + clean(path)
	sec, err := c.request(ctx, "reading", full, func() (*api.Secret, error) {
		return c.api.Logical().ReadWithContext(ctx, full)
	})
	if err != nil {
		return nil, 0, err
	}
	if sec == nil || sec.Data == nil {
		return nil, 0, fmt.Errorf("reading %s: %w", full, ErrNotFound)
	}
	meta, _ := sec.Data["metadata"].(map[string]any)
	version := number(meta["version"])
	data, _ := sec.Data["data"].(map[string]any)
	if data == nil {
		return nil, version, fmt.Errorf("reading %s: version %d is deleted or destroyed: %w", full, version, ErrNotFound)
	}
	return data, version, nil
}

// Write stores data as a new version of the secret at path and returns that version. cas makes
// it a check-and-set: the write happens only if the current version is cas (0: the path has never
// been written, or all its versions and metadata were deleted); otherwise it fails with ErrConflict.
// A negative cas writes unconditionally.
func (c *Client) Write(ctx context.Context, path string, data map[string]any, cas int) (int, error) {
	full := c.mount + "/data/" + clean(path)
	if data == nil {
		data = map[string]any{}
	}
	body := map[string]any{"data": data}
	if cas >= 0 {
		body["options"] = map[string]any{"cas": cas}
	}
	op := "writing"
	if cas >= 0 {
		op = "writing (check-and-set on version " + strconv.Itoa(cas) + ")"
	}
	sec, err := c.request(ctx, op, full, func() (*api.Secret, error) {
		return c.api.Logical().WriteWithContext(ctx, full, body)
	})
	if err != nil {
		return 0, err
	}
	if sec == nil || sec.Data == nil {
		return 0, fmt.Errorf("%s %s: the answer holds no version", op, full)
	}
	v := number(sec.Data["version"])
	if v <= 0 {
		return 0, fmt.Errorf("%s %s: the answer holds no version", op, full)
	}
	return v, nil
}

// List returns the names directly under dir (relative to the mount); names of sub-directories end
// in "/". An empty or missing directory gives an empty list.
func (c *Client) List(ctx context.Context, dir string) ([]string, error) {
	full := c.mount + "/metadata/" + clean(dir)
	sec, err := c.request(ctx, "listing", full, func() (*api.Secret, error) {
		return c.api.Logical().ListWithContext(ctx, full)
	})
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, nil
		}
		return nil, err
	}
	if sec == nil || sec.Data == nil {
		return nil, nil
	}
	raw, _ := sec.Data["keys"].([]any)
	keys := make([]string, 0, len(raw))
	for _, k := range raw {
		if s, ok := k.(string); ok {
			keys = append(keys, s)
		}
	}
	return keys, nil
}

// Metadata returns the metadata of path, or ErrNotFound if it has none.
func (c *Client) Metadata(ctx context.Context, path string) (Metadata, error) {
	full := c.mount + "/metadata/" + clean(path)
	sec, err := c.request(ctx, "reading metadata of", full, func() (*api.Secret, error) {
		return c.api.Logical().ReadWithContext(ctx, full)
	})
	if err != nil {
		return Metadata{}, err
	}
	if sec == nil || sec.Data == nil {
		return Metadata{}, fmt.Errorf("reading metadata of %s: %w", full, ErrNotFound)
	}
	d := sec.Data
	m := Metadata{
		CurrentVersion: number(d["current_version"]),
		OldestVersion:  number(d["oldest_version"]),
		Created:        timeOf(d["created_time"]),
		Updated:        timeOf(d["updated_time"]),
		Versions:       map[int]VersionInfo{},
	}
	vs, _ := d["versions"].(map[string]any)
	for k, raw := range vs {
		n, err := strconv.Atoi(k)
		if err != nil {
			continue
		}
		v, _ := raw.(map[string]any)
		destroyed, _ := v["destroyed"].(bool)
		m.Versions[n] = VersionInfo{Created: timeOf(v["created_time"]), Deleted: timeOf(v["deletion_time"]), Destroyed: destroyed}
	}
	if cur, ok := m.Versions[m.CurrentVersion]; ok && m.CurrentVersion > 0 {
		m.Live = !cur.Destroyed && (cur.Deleted.IsZero() || cur.Deleted.After(c.now()))
	}
	return m, nil
}

// Destroy removes the data of the given versions of path for good. The metadata, and with it the
// version count, stays.
func (c *Client) Destroy(ctx context.Context, path string, versions []int) error {
	if len(versions) == 0 {
		return nil
	}
	full := c.mount + "/destroy/" + clean(path)
	_, err := c.request(ctx, "destroying versions of", full, func() (*api.Secret, error) {
		return c.api.Logical().WriteWithContext(ctx, full, map[string]any{"versions": versions})
	})
	return err
}

// Delete removes path with all its versions and its metadata. Deleting a path that does not exist
// is not an error. The next write to the path starts again at version 1.
func (c *Client) Delete(ctx context.Context, path string) error {
	full := c.mount + "/metadata/" + clean(path)
	_, err := c.request(ctx, "deleting", full, func() (*api.Secret, error) {
		return c.api.Logical().DeleteWithContext(ctx, full)
	})
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// request runs one API call. After a 403 it tries once more if recoverToken put a new token in
// place.
func (c *Client) request(ctx context.Context, op, path string, call func() (*api.Secret, error)) (*api.Secret, error) {
	used := Secret(c.api.Token())
	sec, err := call()
	if err != nil && isForbidden(err) && c.recoverToken(ctx, used) {
		sec, err = call()
	}
	if err != nil {
		err = c.fail(ctx, op, path, err)
		if errors.Is(err, ErrUnavailable) {
			c.setReqErr(err)
		}
		return nil, err
	}
	c.setReqErr(nil)
	return sec, nil
}

// fail wraps err, classified, as "op path: err".
func (c *Client) fail(ctx context.Context, op, path string, err error) error {
	return fmt.Errorf("%s %s: %w", op, path, classify(ctx, err, c.scrub))
}

func clean(p string) string { return strings.Trim(p, "/") }

// number reads a JSON number as decoded by the api package (json.Number), or 0.
func number(v any) int {
	switch n := v.(type) {
	case json.Number:
		i, err := n.Int64()
		if err != nil {
			return 0
		}
		return int(i)
	case float64:
		return int(n)
	case int:
		return n
	}
	return 0
}

func timeOf(v any) time.Time {
	s, _ := v.(string)
	if s == "" {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}
	}
	return t
}

// Stats counts the HTTP requests a Client made, by kind. KV v2 requests are Reads (data and
// metadata), Writes, Lists and Deletes (including destroy); sign-ins, renewals, token lookups and
// unwrapping are Auth; anything else is Other.
type Stats struct {
	Reads   int64
	Writes  int64
	Lists   int64
	Deletes int64
	Auth    int64
	Other   int64
}

// Total is the number of requests of every kind.
func (s Stats) Total() int64 { return s.Reads + s.Writes + s.Lists + s.Deletes + s.Auth + s.Other }

// KV is the number of KV v2 requests.
func (s Stats) KV() int64 { return s.Reads + s.Writes + s.Lists + s.Deletes }

// Sub returns the requests made between an earlier snapshot o and s.
func (s Stats) Sub(o Stats) Stats {
	return Stats{s.Reads - o.Reads, s.Writes - o.Writes, s.Lists - o.Lists, s.Deletes - o.Deletes, s.Auth - o.Auth, s.Other - o.Other}
}

// Stats returns the requests made so far.
func (c *Client) Stats() Stats { return c.stats.snapshot() }

type counters struct {
	reads, writes, lists, deletes, auth, other atomic.Int64
}

func (n *counters) snapshot() Stats {
	return Stats{n.reads.Load(), n.writes.Load(), n.lists.Load(), n.deletes.Load(), n.auth.Load(), n.other.Load()}
}

// countingTransport counts every request that goes out, whatever the answer.
type countingTransport struct {
	next  http.RoundTripper
	mount string
	c     *counters
}

func (t *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	t.kind(r).Add(1)
	return t.next.RoundTrip(r)
}

func (t *countingTransport) kind(r *http.Request) *atomic.Int64 {
	p := strings.TrimPrefix(r.URL.Path, "/v1/")
	if strings.HasPrefix(p, "auth/") || strings.HasPrefix(p, "sys/wrapping/") {
		return &t.c.auth
	}
	rest, ok := strings.CutPrefix(p, t.mount+"/")
	if !ok {
		return &t.c.other
	}
	switch {
	case r.Method == http.MethodGet && r.URL.Query().Get("list") == "true", r.Method == "LIST":
		return &t.c.lists
	case r.Method == http.MethodGet:
		return &t.c.reads
	case r.Method == http.MethodDelete, strings.HasPrefix(rest, "destroy/"), strings.HasPrefix(rest, "delete/"):
		return &t.c.deletes
	default:
		return &t.c.writes
	}
}
