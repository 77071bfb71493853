// Package vaultstore keeps projects and tokens in HashiCorp Vault's KV version 2 engine, over the
// vault package. It implements store.Store.
//
// Layout, under a mount (default "secret") and a prefix (default "postern"):
//
//	<prefix>/projects/<name>  a project: written by administrators, read by the sidecar
//	<prefix>/tokens/<name>    the project's OAuth token record: written by the sidecar
//	<prefix>/index            {"projects": {"<name>": <version>, ...}}: written with every
//	                          PutProject and DeleteProject, read by the sidecar
//
// A record's data is the JSON that project.MarshalStored or MarshalStoredToken writes, as a KV
// object, so that administrators can read and edit records with `vault kv get`, `put` and `patch`
// (README.md lists the fields). A record's store version is its KV v2 version.
//
//  1. Token is one read. PutToken is a check-and-set write on the version read, so two sidecars
//     never lose a rotated refresh token; version 0 means "must not exist yet", which includes a
//     record deleted by DeleteProject. A lost race is store.ErrConflict.
//  2. Projects is what the sidecar calls every reload interval, so its cost must not grow with the
//     number of projects. A cache of decoded projects is kept between calls, and:
//     a. A quick poll reads the index (1 request), then reads only the projects whose index entry
//     changed since the previous poll and was not already seen at that version, and the projects
//     that left the index (to confirm a delete). Steady state: 1 request per poll.
//     b. A full scan, on the first call and then once Options.FullScanInterval (default 1 min) has
//     passed since the last one ended, reads the index, LISTs projects/, and for every name listed
//     reads the metadata if the project is cached or the data if not (2+N requests, N counting the
//     tombstones of deleted projects), then the data of each cached project whose version changed.
//     It is what picks up records written with plain `vault kv put`, which leaves the index alone.
//     The N requests go eight at a time: 10,000 projects take seconds, not a minute. When the last
//     scan took longer than half the interval, the next waits twice as long as it took, so that
//     full scans never keep Vault busy more than a third of the time (100,000 projects: about 90 s
//     a scan on a 2-core test machine, so one every 3 minutes, not one after the other).
//     c. A record that cannot be decoded is logged once per version and the last good decoding of
//     that project, if any, is kept: one bad edit never hides a project or the others.
//     d. A failed request fails the whole call: the caller keeps its last good snapshot. A full scan
//     cut short (the sidecar bounds each reload; 100,000 projects take longer) keeps what it
//     confirmed, and the next call goes on from there, skipping every project read since the scan
//     began; deletes are applied only by a scan that completes.
//     e. ProjectsStamp (store.Stamper) polls the same way and returns a digest of the names and
//     versions held, so that the sidecar copies and re-indexes the projects only when one changed.
//  3. PutProject writes the project (a check-and-set when its Version is not 0), then records the
//     new version in the index with a check-and-set loop. When the index is missing it is rebuilt
//     from a full scan first. If the index cannot be updated the project is still written; the
//     next full scan picks it up. PutProjects writes many projects eight at a time and updates
//     the index once.
//  4. Projects never reports "no project" for a Vault that lost them: when the index names
//     projects but projects/ lists none, or when every project read before is gone and LIST shows
//     not even their tombstones (a wrong mount or prefix, a Vault replaced or restored, a policy
//     change), it returns store.ErrProjectsLost and keeps its state, so the sidecar keeps the last
//     good projects, or, having none, defers mail. A Vault that never held a project (no index,
//     nothing listed) is empty. A process started against a Vault that lost everything, index
//     included, cannot tell it from a new one: that is why deletes leave tombstones.
//  5. DeleteProject leaves a tombstone: it writes an empty version over the record (so a writer
//     holding an older version gets a conflict and versions keep increasing when the record is
//     created again), then destroys every version's data for good, for the project and for its
//     token; then it removes the project from the index.
//
// When Vault cannot be reached, every method returns an error wrapping ErrUnavailable
// (vault.ErrUnavailable); a policy that forbids the request gives vault.ErrForbidden.
package vaultstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/vault"
)

// ErrUnavailable is wrapped by errors returned while Vault cannot be reached or cannot serve
// (sealed, standby, rate limited) or the client holds no working token. It is vault.ErrUnavailable.
var ErrUnavailable = vault.ErrUnavailable

// Defaults for the zero Options.
const (
	DefaultPrefix           = "postern"
	DefaultFullScanInterval = time.Minute
)

// Options configure a Store. The zero value uses the defaults.
type Options struct {
	// Mount is the KV v2 mount; empty means the vault client's (vault.Options.Mount, "secret").
	Mount string
	// Prefix is the path under the mount that holds Postern's records; empty means "postern".
	Prefix string
	// FullScanInterval is the longest time between two full scans in Projects; zero means 1 min.
	FullScanInterval time.Duration
	// Logger receives the store's log; nil discards it. Open passes it to the vault client too
	// when vault.Options.Logger is nil.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Store is the Vault store.
type Store struct {
	vc       *vault.Client
	prefix   string
	fullScan time.Duration
	log      *slog.Logger
	now      func() time.Time

	stop      context.CancelFunc // set by Open: ends the client's Run
	done      chan struct{}
	closeOnce sync.Once

	seed      maphash.Seed // of ProjectsStamp's digest
	mu        sync.Mutex   // one Projects call at a time; guards the fields below
	cache     map[string]entry
	lastIndex map[string]int // the index as the previous call read it
	lastFull  time.Time
	scanFrom  time.Time     // when the full scan under way began; zero when none is
	scanTook  time.Duration // how long the last full scan took, its attempts and the gaps between
	scanned   bool
	badNames  map[string]bool // records under projects/ whose names are not project names, logged once
}

// entry is what the cache knows of one project.
type entry struct {
	seen    int             // the newest version examined, usable or not
	p       project.Project // the last good decoding (p.Version is its version), if ok
	ok      bool
	checked time.Time // when a read last confirmed seen against Vault
}

var _ store.Store = (*Store)(nil)

// Open signs in to Vault with vo and returns a store that keeps the client's token alive until
// Close.
func Open(ctx context.Context, vo vault.Options, o Options) (*Store, error) {
	if o.Mount != "" {
		vo.Mount = o.Mount
	}
	if vo.Logger == nil {
		vo.Logger = o.Logger
	}
	vc, err := vault.New(ctx, vo)
	if err != nil {
		return nil, fmt.Errorf("opening the vault store: %w", err)
	}
	s, err := New(vc, o)
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.stop, s.done = cancel, make(chan struct{})
	go func() {
		defer close(s.done)
		vc.Run(runCtx)
	}()
	return s, nil
}

// New returns a store over a client the caller owns (and runs). o.Mount, if set, must be the
// client's mount.
func New(vc *vault.Client, o Options) (*Store, error) {
	if m := strings.Trim(o.Mount, "/"); m != "" && m != vc.Mount() {
		return nil, fmt.Errorf("vault store: mount %q differs from the vault client's %q", m, vc.Mount())
	}
	s := &Store{
		vc:       vc,
		prefix:   strings.Trim(o.Prefix, "/"),
		fullScan: o.FullScanInterval,
		log:      o.Logger,
		now:      o.Now,
		cache:    map[string]entry{},
		badNames: map[string]bool{},
		seed:     maphash.MakeSeed(),
	}
	if s.prefix == "" {
		s.prefix = DefaultPrefix
	}
	if s.fullScan <= 0 {
		s.fullScan = DefaultFullScanInterval
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	return s, nil
}

// Client is the vault client the store uses (for Healthy and Stats).
func (s *Store) Client() *vault.Client { return s.vc }

// Healthy reports the vault client's last failure, or nil.
func (s *Store) Healthy() error { return s.vc.Healthy() }

// Close stops the token upkeep started by Open. It does not revoke the token.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		if s.stop != nil {
			s.stop()
			<-s.done
		}
	})
	return nil
}

func (s *Store) projectPath(name string) string { return s.prefix + "/projects/" + name }
func (s *Store) tokenPath(name string) string   { return s.prefix + "/tokens/" + name }
func (s *Store) indexPath() string              { return s.prefix + "/index" }

// Project returns one project with its Version set, or store.ErrNotFound.
func (s *Store) Project(ctx context.Context, name string) (project.Project, error) {
	if !project.ValidName(name) {
		return project.Project{}, fmt.Errorf("reading project %q: %w", name, store.ErrNotFound)
	}
	data, v, err := s.vc.Read(ctx, s.projectPath(name))
	if errors.Is(err, vault.ErrNotFound) {
		return project.Project{}, fmt.Errorf("reading project %s: %w", name, store.ErrNotFound)
	}
	if err != nil {
		return project.Project{}, fmt.Errorf("reading project %s: %w", name, err)
	}
	return decodeProject(name, data, v)
}

// Token returns the token record of a project with its Version set, or store.ErrNotFound.
func (s *Store) Token(ctx context.Context, name string) (project.Token, error) {
	if !project.ValidName(name) {
		return project.Token{}, fmt.Errorf("reading the token of project %q: %w", name, store.ErrNotFound)
	}
	data, v, err := s.vc.Read(ctx, s.tokenPath(name))
	if errors.Is(err, vault.ErrNotFound) || (err == nil && len(data) == 0) {
		return project.Token{}, fmt.Errorf("reading the token of project %s: %w", name, store.ErrNotFound)
	}
	if err != nil {
		return project.Token{}, fmt.Errorf("reading the token of project %s: %w", name, err)
	}
	b, err := json.Marshal(data)
	if err != nil {
		return project.Token{}, fmt.Errorf("reading the token of project %s: %w", name, err)
	}
	t, err := project.UnmarshalStoredToken(b)
	if err != nil {
		return project.Token{}, fmt.Errorf("reading the token of project %s (version %d): %w", name, v, err)
	}
	t.Version = v
	return t, nil
}

// PutToken writes t if the stored version is still t.Version (0: no token record may exist) and
// returns the new version; otherwise it returns store.ErrConflict and writes nothing.
func (s *Store) PutToken(ctx context.Context, name string, t project.Token) (int, error) {
	if !project.ValidName(name) {
		return 0, fmt.Errorf("writing token: invalid project name %q", name)
	}
	b, err := project.MarshalStoredToken(t)
	if err != nil {
		return 0, fmt.Errorf("encoding the token of project %s: %w", name, err)
	}
	data, err := toMap(b)
	if err != nil {
		return 0, fmt.Errorf("encoding the token of project %s: %w", name, err)
	}
	v, err := s.write(ctx, s.tokenPath(name), data, t.Version)
	if err != nil {
		return 0, fmt.Errorf("writing the token of project %s at version %d: %w", name, t.Version, err)
	}
	return v, nil
}

// PutProject creates or replaces a project; when p.Version is not 0 only if the stored version is
// still p.Version. It returns the new version, and records it in the index.
func (s *Store) PutProject(ctx context.Context, p project.Project) (int, error) {
	if !project.ValidName(p.Name) {
		return 0, fmt.Errorf("writing project: invalid name %q", p.Name)
	}
	b, err := project.MarshalStored(p)
	if err != nil {
		return 0, fmt.Errorf("encoding project %s: %w", p.Name, err)
	}
	data, err := toMap(b)
	if err != nil {
		return 0, fmt.Errorf("encoding project %s: %w", p.Name, err)
	}
	cas := p.Version
	if cas == 0 {
		cas = -1
	}
	v, err := s.write(ctx, s.projectPath(p.Name), data, cas)
	if err != nil {
		return 0, fmt.Errorf("writing project %s at version %d: %w", p.Name, p.Version, err)
	}
	if err := s.updateIndex(ctx, func(m map[string]int) { m[p.Name] = v }); err != nil {
		s.log.Warn("project written but the index was not updated: sidecars see it at their next full scan",
			"project", p.Name, "version", v, "err", err)
	}
	return v, nil
}

// PutProjects writes many projects at once, for importing them: every entry is checked first as
// PutProject would (an invalid name, a name given twice or a record that cannot be encoded writes
// none of them), then the records are written scanWorkers at a time, each a check-and-set when its
// Version is not 0, and the index is updated once instead of once per project. Vault has no
// transactions: the first failed write (store.ErrConflict, ErrUnavailable) stops the writes not
// yet started, the records already written stay and are indexed, and the error says how many. It
// returns the new versions in the order of ps, 0 for those not written.
func (s *Store) PutProjects(ctx context.Context, ps []project.Project) ([]int, error) {
	datas := make([]map[string]any, len(ps))
	seen := make(map[string]bool, len(ps))
	for i, p := range ps {
		if !project.ValidName(p.Name) {
			return nil, fmt.Errorf("writing projects: invalid name %q", p.Name)
		}
		if seen[p.Name] {
			return nil, fmt.Errorf("writing projects: %s is given twice", p.Name)
		}
		seen[p.Name] = true
		b, err := project.MarshalStored(p)
		if err == nil {
			datas[i], err = toMap(b)
		}
		if err != nil {
			return nil, fmt.Errorf("encoding project %s: %w", p.Name, err)
		}
	}
	versions := make([]int, len(ps))
	werr := parallel(ctx, len(ps), func(ctx context.Context, i int) error {
		cas := ps[i].Version
		if cas == 0 {
			cas = -1
		}
		v, err := s.write(ctx, s.projectPath(ps[i].Name), datas[i], cas)
		if err != nil {
			return fmt.Errorf("writing project %s at version %d: %w", ps[i].Name, ps[i].Version, err)
		}
		versions[i] = v
		return nil
	})
	written := 0
	for _, v := range versions {
		if v > 0 {
			written++
		}
	}
	if written > 0 {
		err := s.updateIndex(ctx, func(m map[string]int) {
			for i, p := range ps {
				if versions[i] > 0 {
					m[p.Name] = versions[i]
				}
			}
		})
		if err != nil {
			s.log.Warn("projects written but the index was not updated: sidecars see them at their next full scan",
				"projects", written, "err", err)
		}
	}
	if werr != nil {
		return versions, fmt.Errorf("%w (%d of %d projects written; the others were not)", werr, written, len(ps))
	}
	return versions, nil
}

// DeleteProject removes a project and its token record. It returns store.ErrNotFound when neither
// exists.
func (s *Store) DeleteProject(ctx context.Context, name string) error {
	if !project.ValidName(name) {
		return fmt.Errorf("deleting project %q: %w", name, store.ErrNotFound)
	}
	hadProject, err := s.tombstone(ctx, s.projectPath(name))
	if err != nil {
		return fmt.Errorf("deleting project %s: %w", name, err)
	}
	hadToken, err := s.tombstone(ctx, s.tokenPath(name))
	if err != nil {
		return fmt.Errorf("deleting the token of project %s: %w", name, err)
	}
	if hadProject {
		if err := s.updateIndex(ctx, func(m map[string]int) { delete(m, name) }); err != nil {
			s.log.Warn("project deleted but the index was not updated: sidecars see it at their next full scan",
				"project", name, "err", err)
		}
	}
	if !hadProject && !hadToken {
		return fmt.Errorf("deleting project %s: %w", name, store.ErrNotFound)
	}
	return nil
}

// write is a KV write where version 0 means "must not exist", including a record that was deleted
// and left its last version behind, and a negative version writes unconditionally.
func (s *Store) write(ctx context.Context, path string, data map[string]any, version int) (int, error) {
	v, err := s.vc.Write(ctx, path, data, version)
	if version == 0 && errors.Is(err, vault.ErrConflict) {
		old, cur, rerr := s.vc.Read(ctx, path)
		switch {
		case errors.Is(rerr, vault.ErrNotFound) && cur > 0, rerr == nil && len(old) == 0:
			v, err = s.vc.Write(ctx, path, data, cur)
		case rerr != nil && !errors.Is(rerr, vault.ErrNotFound):
			return 0, rerr
		}
	}
	if errors.Is(err, vault.ErrConflict) {
		return 0, fmt.Errorf("%w (%w)", store.ErrConflict, err)
	}
	return v, err
}

// tombstone writes an empty version over a live record and destroys the data of every version. It
// reports whether the record existed.
func (s *Store) tombstone(ctx context.Context, path string) (bool, error) {
	for range 5 {
		md, err := s.vc.Metadata(ctx, path)
		if errors.Is(err, vault.ErrNotFound) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		var versions []int
		for n, vi := range md.Versions {
			if !vi.Destroyed {
				versions = append(versions, n)
			}
		}
		if md.Live {
			v, err := s.vc.Write(ctx, path, map[string]any{}, md.CurrentVersion)
			if errors.Is(err, vault.ErrConflict) {
				continue // written meanwhile: look again
			}
			if err != nil {
				return false, err
			}
			versions = append(versions, v)
		}
		sort.Ints(versions)
		if err := s.vc.Destroy(ctx, path, versions); err != nil {
			return false, err
		}
		return md.Live, nil
	}
	return false, fmt.Errorf("deleting %s: it keeps changing: %w", path, store.ErrConflict)
}

// Projects returns every project, sorted by name, each with its Version set. See the package
// documentation for what each call costs.
func (s *Store) Projects(ctx context.Context) ([]project.Project, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.pollLocked(ctx); err != nil {
		return nil, err
	}
	names := s.liveNamesLocked()
	out := make([]project.Project, 0, len(names))
	for _, name := range names {
		out = append(out, clone(s.cache[name].p))
	}
	return out, nil
}

// ProjectsStamp implements store.Stamper. It polls Vault as Projects does, with the same requests
// (one, the index, in steady state), and returns a digest of the name and version of every
// project it then holds, so that the sidecar decodes and copies the projects only when one
// changed. A KV version never changes its data, so the digest changes exactly when what Projects
// returns does.
func (s *Store) ProjectsStamp(ctx context.Context) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.pollLocked(ctx); err != nil {
		return "", err
	}
	// An order-free sum of one hash per project: no sorting of 100,000 names per poll.
	var sum, n uint64
	var h maphash.Hash
	h.SetSeed(s.seed)
	for name, e := range s.cache {
		if !e.ok {
			continue
		}
		h.Reset()
		h.WriteString(name)
		h.WriteByte(0)
		h.WriteString(strconv.Itoa(e.p.Version))
		sum += h.Sum64()
		n++
	}
	return strconv.FormatUint(n, 10) + ":" + strconv.FormatUint(sum, 16), nil
}

// pollLocked brings the cache up to date: a full scan when one is due, a quick poll otherwise.
func (s *Store) pollLocked(ctx context.Context) error {
	now := s.now()
	before := s.liveCountLocked()
	cache, lastIndex, lastFull, scanned := s.cache, s.lastIndex, s.lastFull, s.scanned
	var err error
	if !s.scanned || now.Sub(s.lastFull) >= max(s.fullScan, 2*s.scanTook) {
		err = s.fullScanLocked(ctx, now)
	} else {
		err = s.quickPollLocked(ctx)
	}
	if err != nil {
		return err
	}
	if live := s.liveCountLocked(); live == 0 && before > 0 {
		// Every project went at once. Deleted projects leave tombstones that LIST still shows; a
		// listing with nothing at all is a wrong path, a replaced Vault or a policy change, not
		// an administrator's decision.
		if err := s.confirmEmptyLocked(ctx, before); err != nil {
			s.cache, s.lastIndex, s.lastFull, s.scanned = cache, lastIndex, lastFull, scanned
			return err
		}
	}
	return nil
}

// liveCountLocked returns how many cached projects are usable.
func (s *Store) liveCountLocked() int {
	n := 0
	for _, e := range s.cache {
		if e.ok {
			n++
		}
	}
	return n
}

// liveNamesLocked returns the names of the cached projects, sorted.
func (s *Store) liveNamesLocked() []string {
	names := make([]string, 0, len(s.cache))
	for name, e := range s.cache {
		if e.ok {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}

// confirmEmptyLocked checks, when the n projects read before are all gone, that LIST still shows
// their records (tombstones of deletes). If it shows none, the empty answer is not trusted:
// store.ErrProjectsLost.
func (s *Store) confirmEmptyLocked(ctx context.Context, n int) error {
	listed, err := s.vc.List(ctx, s.prefix+"/projects")
	if err != nil {
		return fmt.Errorf("listing projects: %w", err)
	}
	for _, name := range listed {
		if project.ValidName(name) {
			return nil
		}
	}
	return fmt.Errorf("vault lists nothing under %s/projects/ where it held %d project(s), not even the records deletes leave: check store.vault's mount and prefix, the policy, and that this is the Vault the projects are in: %w",
		s.prefix, n, store.ErrProjectsLost)
}

// quickPollLocked reads the index and the projects whose entries changed.
func (s *Store) quickPollLocked(ctx context.Context) error {
	index, _, err := s.readIndex(ctx)
	if err != nil {
		return err
	}
	var stale []string
	for name, v := range index {
		if prev, ok := s.lastIndex[name]; ok && prev == v {
			continue
		}
		if e, ok := s.cache[name]; ok && e.seen == v {
			continue
		}
		stale = append(stale, name)
	}
	for name := range s.lastIndex {
		if _, still := index[name]; !still {
			if _, cached := s.cache[name]; cached {
				stale = append(stale, name)
			}
		}
	}
	if len(stale) == 0 {
		s.lastIndex = index
		return nil
	}
	// Copied only when something is read: the cache of 100,000 projects is not copied on every
	// poll, and a failed read leaves it as it was.
	next := maps.Clone(s.cache)
	sort.Strings(stale)
	for _, name := range stale {
		if err := s.refresh(ctx, next, name); err != nil {
			return err
		}
	}
	s.cache, s.lastIndex = next, index
	return nil
}

// fullScanLocked lists every project and reads what changed, scanWorkers requests at a time.
func (s *Store) fullScanLocked(ctx context.Context, now time.Time) error {
	index, _, err := s.readIndex(ctx)
	if err != nil {
		return err
	}
	listed, err := s.vc.List(ctx, s.prefix+"/projects")
	if err != nil {
		return fmt.Errorf("listing projects: %w", err)
	}
	names := make([]string, 0, len(listed))
	for _, name := range listed {
		if strings.HasSuffix(name, "/") {
			continue
		}
		if !project.ValidName(name) {
			if !s.badNames[name] {
				s.badNames[name] = true
				s.log.Warn("ignoring a record whose name is not a valid project name", "path", s.projectPath(name))
			}
			continue
		}
		names = append(names, name)
	}
	if len(names) == 0 && len(index) > 0 {
		return fmt.Errorf("the index %s names %d project(s) but Vault lists nothing under %s/projects/: check the policy and that the projects were not deleted outside Postern: %w",
			s.indexPath(), len(index), s.prefix, store.ErrProjectsLost)
	}
	// What each name needs, found in parallel; applied below in the listed order, so that the
	// outcome and the log are those of a sequential scan.
	type scanned struct {
		gone, same bool // the record is gone; the cached decoding is current
		rec        record
		done       bool // the name's request succeeded (or none was needed)
	}
	if s.scanFrom.IsZero() {
		s.scanFrom = now
	}
	results := make([]scanned, len(names))
	err = parallel(ctx, len(names), func(ctx context.Context, i int) error {
		name := names[i]
		if e, cached := s.cache[name]; cached {
			if !e.checked.Before(s.scanFrom) {
				// Confirmed since this scan began, by an attempt of it that failed later.
				results[i].same, results[i].done = true, true
				return nil
			}
			md, err := s.vc.Metadata(ctx, s.projectPath(name))
			if errors.Is(err, vault.ErrNotFound) || (err == nil && !md.Live) {
				results[i].gone, results[i].done = true, true
				return nil
			}
			if err != nil {
				return fmt.Errorf("reading the metadata of project %s: %w", name, err)
			}
			if e.seen == md.CurrentVersion {
				results[i].same, results[i].done = true, true
				return nil
			}
		}
		rec, err := s.fetch(ctx, name)
		results[i].rec, results[i].done = rec, err == nil
		return err
	})
	checked := s.now()
	if err != nil {
		// Keep what the attempt confirmed, so that the next one goes on from there rather than
		// starting again: a scan of 100,000 projects takes longer than one reload may, and would
		// otherwise never end. Nothing is dropped here; deletes wait for a scan that completes.
		for i, name := range names {
			switch r := results[i]; {
			case !r.done || r.gone:
			case r.same:
				e := s.cache[name]
				e.checked = checked
				s.cache[name] = e
			default:
				s.apply(s.cache, name, r.rec, checked)
			}
		}
		return err
	}
	next := make(map[string]entry, len(names))
	for i, name := range names {
		r := results[i]
		if r.gone {
			continue
		}
		if e, cached := s.cache[name]; cached {
			e.checked = checked
			next[name] = e
		}
		if !r.same {
			s.apply(next, name, r.rec, checked)
		}
	}
	// The interval counts from the scan's end: counted from its start, a scan longer than the
	// interval (100,000 projects) would be due again at once, and the directory's next call would
	// start another instead of polling the index.
	s.cache, s.lastIndex, s.lastFull, s.scanned = next, index, s.now(), true
	s.scanTook, s.scanFrom = s.lastFull.Sub(s.scanFrom), time.Time{}
	return nil
}

// record is one read of a project record: its data and version, or gone.
type record struct {
	data    map[string]any
	version int
	gone    bool // not found, deleted or destroyed
}

// fetch reads one project record.
func (s *Store) fetch(ctx context.Context, name string) (record, error) {
	data, v, err := s.vc.Read(ctx, s.projectPath(name))
	if errors.Is(err, vault.ErrNotFound) || (err == nil && len(data) == 0) {
		return record{gone: true}, nil
	}
	if err != nil {
		return record{}, fmt.Errorf("reading project %s: %w", name, err)
	}
	return record{data: data, version: v}, nil
}

// refresh reads one project into next.
func (s *Store) refresh(ctx context.Context, next map[string]entry, name string) error {
	rec, err := s.fetch(ctx, name)
	if err != nil {
		return err
	}
	s.apply(next, name, rec, s.now())
	return nil
}

// apply puts one read, made at checked, into next: the project is dropped when gone, replaced when
// it decodes, and kept at its last good version when it does not.
func (s *Store) apply(next map[string]entry, name string, rec record, checked time.Time) {
	if rec.gone {
		delete(next, name)
		return
	}
	p, err := decodeProject(name, rec.data, rec.version)
	if err != nil {
		e := next[name]
		if e.seen != rec.version {
			s.log.Error("cannot use a project record: keeping its last good version", "project", name, "version", rec.version,
				"last_good_version", e.p.Version, "err", err)
		}
		e.seen, e.checked = rec.version, checked
		next[name] = e
		return
	}
	next[name] = entry{seen: rec.version, p: p, ok: true, checked: checked}
}

// scanWorkers is how many requests a full scan, a reindex or a batch write keeps in flight: with
// thousands of projects, a scan takes thousands of round trips, and Vault serves them in parallel.
const scanWorkers = 8

// parallel calls fn for every i in [0, n), at most scanWorkers at a time. The first error stops
// the calls not yet started and is returned; calls under way finish, so that a write Vault made is
// never reported as not made.
func parallel(ctx context.Context, n int, fn func(ctx context.Context, i int) error) error {
	var (
		next    atomic.Int64
		stopped atomic.Bool
		wg      sync.WaitGroup
		once    sync.Once
		first   error
	)
	for range min(scanWorkers, n) {
		wg.Go(func() {
			for !stopped.Load() && ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := fn(ctx, i); err != nil {
					once.Do(func() { first = err; stopped.Store(true) })
					return
				}
			}
		})
	}
	wg.Wait()
	if first != nil {
		return first
	}
	return ctx.Err()
}

// readIndex returns the index and its version; a missing index is an empty one.
func (s *Store) readIndex(ctx context.Context) (map[string]int, int, error) {
	data, v, err := s.vc.Read(ctx, s.indexPath())
	if errors.Is(err, vault.ErrNotFound) {
		return nil, v, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("reading the project index: %w", err)
	}
	m := map[string]int{}
	raw, _ := data["projects"].(map[string]any)
	for name, x := range raw {
		if n, ok := x.(json.Number); ok {
			if i, err := n.Int64(); err == nil {
				m[name] = int(i)
			}
		}
	}
	return m, v, nil
}

// updateIndex applies change to the index with a check-and-set loop. A missing index is rebuilt
// from a scan first.
func (s *Store) updateIndex(ctx context.Context, change func(map[string]int)) error {
	for range 10 {
		m, v, err := s.readIndex(ctx)
		if err != nil {
			return err
		}
		if m == nil {
			if m, err = s.scanVersions(ctx); err != nil {
				return err
			}
		}
		change(m)
		if _, err = s.vc.Write(ctx, s.indexPath(), indexData(m), v); !errors.Is(err, vault.ErrConflict) {
			return err
		}
	}
	return fmt.Errorf("updating the project index: too many concurrent writers: %w", store.ErrConflict)
}

// Reindex rebuilds the index from the projects in Vault, for after records were written or deleted
// with plain `vault kv` commands. It returns the number of projects indexed.
func (s *Store) Reindex(ctx context.Context) (int, error) {
	m, err := s.scanVersions(ctx)
	if err != nil {
		return 0, err
	}
	err = s.updateIndex(ctx, func(cur map[string]int) {
		clear(cur)
		maps.Copy(cur, m)
	})
	return len(m), err
}

// scanVersions lists the projects and reads the current version of each live one.
func (s *Store) scanVersions(ctx context.Context) (map[string]int, error) {
	names, err := s.vc.List(ctx, s.prefix+"/projects")
	if err != nil {
		return nil, fmt.Errorf("listing projects: %w", err)
	}
	names = slices.DeleteFunc(names, func(name string) bool {
		return strings.HasSuffix(name, "/") || !project.ValidName(name)
	})
	versions := make([]int, len(names)) // 0: not live
	err = parallel(ctx, len(names), func(ctx context.Context, i int) error {
		md, err := s.vc.Metadata(ctx, s.projectPath(names[i]))
		if errors.Is(err, vault.ErrNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading the metadata of project %s: %w", names[i], err)
		}
		if md.Live {
			versions[i] = md.CurrentVersion
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	m := make(map[string]int, len(names))
	for i, name := range names {
		if versions[i] > 0 {
			m[name] = versions[i]
		}
	}
	return m, nil
}

func indexData(m map[string]int) map[string]any {
	projects := make(map[string]any, len(m))
	for k, v := range m {
		projects[k] = v
	}
	return map[string]any{"projects": projects}
}

// toMap turns a stored record's JSON into the KV object written to Vault.
func toMap(b []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, err
	}
	return m, nil
}

// decodeProject turns a KV object back into a project. Top-level values that the project keeps as
// something other than a string (enabled, senders, upstream, ...) may be given as JSON text, since
// `vault kv put key=value` and `vault kv patch key=value` only write strings.
func decodeProject(name string, data map[string]any, version int) (project.Project, error) {
	if len(data) == 0 {
		return project.Project{}, fmt.Errorf("reading project %s: %w", name, store.ErrNotFound)
	}
	fixed := make(map[string]any, len(data))
	for k, v := range data {
		if str, ok := v.(string); ok && jsonValued[k] {
			var parsed any
			dec := json.NewDecoder(strings.NewReader(str))
			dec.UseNumber()
			if err := dec.Decode(&parsed); err == nil && !dec.More() {
				if _, isString := parsed.(string); !isString {
					v = parsed
				}
			}
		}
		fixed[k] = v
	}
	if n, ok := fixed["name"].(string); ok && n != "" && n != name {
		return project.Project{}, fmt.Errorf("project record %s (version %d) names project %q", name, version, n)
	}
	fixed["name"] = name
	b, err := json.Marshal(fixed)
	if err != nil {
		return project.Project{}, fmt.Errorf("project %s (version %d): %w", name, version, err)
	}
	p, err := project.UnmarshalStored(b)
	if err != nil {
		return project.Project{}, fmt.Errorf("project %s (version %d): %w", name, version, err)
	}
	p.Version = version
	return p, nil
}

// jsonValued names the top-level fields of a stored project whose values are not strings.
var jsonValued = func() map[string]bool {
	m := map[string]bool{}
	t := reflect.TypeFor[project.Project]()
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" || f.Type.Kind() == reflect.String {
			continue
		}
		m[name] = true
	}
	return m
}()

// clone returns a copy of p that shares no memory with it.
func clone(p project.Project) project.Project {
	p.Senders = slices.Clone(p.Senders)
	p.SendAs = slices.Clone(p.SendAs)
	if p.Auth.OAuth != nil {
		o := *p.Auth.OAuth
		o.Scopes = slices.Clone(o.Scopes)
		p.Auth.OAuth = &o
	}
	if p.Auth.Plugin != nil {
		pa := *p.Auth.Plugin
		pa.Config = maps.Clone(pa.Config)
		p.Auth.Plugin = &pa
	}
	return p
}
