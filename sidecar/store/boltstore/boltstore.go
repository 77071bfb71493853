// Package boltstore is the embedded encrypted store for a single host without Vault: every project
// and token is one record in a bbolt database, encrypted on its own under a key kept in a separate
// key file.
//
// Why bbolt: it is the Go ecosystem's embedded key-value store (etcd, Consul and Vault's raft
// storage run on it), pure Go, one file, with ACID transactions, copy-on-write pages and a commit
// that never leaves a half-written database behind. A write costs the pages of the records it
// touches and two fsyncs, not a rewrite of the whole store as package filestore's single encrypted
// file did; BenchmarkPutProject5000 in both packages shows the difference.
//
// Layout. Three buckets:
//
//	meta      "format" -> "1"; "key_id" -> 16 bytes identifying the key the records are under;
//	          "generation" -> writes so far, "projects" -> projects that exist (8 bytes each, big endian)
//	projects  project name -> record
//	tokens    project name -> record
//
// A record is a 10-byte header followed, unless it is a tombstone, by a 24-byte nonce and the
// XChaCha20-Poly1305 ciphertext of the JSON project.MarshalStored / MarshalStoredToken wrote:
//
//	format (1 byte, 1) | flags (1 byte, 1 = tombstone) | version (8 bytes, big endian) | nonce | ciphertext
//
// The additional data of the encryption is the bucket name, the record's name and its header, so a
// record cannot be moved to another name, another bucket or another version without being detected.
// A deleted record leaves a tombstone with its last version, so a re-created record continues the
// count and a writer holding a version read before the delete still gets store.ErrConflict.
//
// Names are not hidden: they are bbolt keys in clear. They are identifiers that also appear in
// Vault paths, logs and metric labels, and keeping them in clear lets a read find one record
// without decrypting the others. The secrets and every other setting are encrypted.
//
// Keys. The key file holds 32 random bytes (the same file and format as package filestore's, so a
// migrated store keeps its key). The record key and the key id are derived from it with HKDF-SHA256,
// each under its own label. XChaCha20-Poly1305's 24-byte random nonces can be drawn for every write
// of the store's life without a collision worth considering, which AES-GCM's 12-byte ones cannot.
//
// The flow:
//
//  1. Open checks the key file (32 bytes, mode 0600 or stricter) and the database. It never makes a
//     store unless asked: a missing key file or database is an error naming the path and the fix
//     (ErrNotExist when both are missing; the rules and wording are package storefile's, shared with
//     the file store). Create (`postern init`) makes a new key file and an empty database and
//     refuses when either file exists; Options.Create (the first `postern project add`) does the
//     same when both are missing. A data file in package filestore's format is migrated once,
//     automatically: see migrate.go.
//  2. Every write transaction counts itself in the meta bucket (generation) with the projects it
//     leaves, and then, still under the write lock, records both in the index file beside the
//     database (Path + ".index", package storefile). The index lives outside the database, so an
//     empty or older copy of the database put back cannot bring its own: a database that holds no
//     project at an older generation than an index that counted some has lost its projects, and
//     every read and write fails with store.ErrProjectsLost, so mail is deferred, never rerouted or
//     bounced. Open still succeeds then (`postern serve` answers "try again later" and sees the
//     restored database at its next read). Deleting the last project is counted like any write, so
//     the store is then empty on purpose.
//  3. Every operation opens the database for its own transaction and closes it afterwards, under a
//     lock on the lock file beside it (Path + ".lock"): shared for reads, exclusive for writes. So
//     `postern project add` can write while `postern serve` runs, as bbolt itself allows only one
//     process to hold a database open for writing. Opening costs an open, an flock and an mmap.
//  4. A write is one bbolt transaction: it reads the record's header, applies the check-and-set, and
//     commits (pages written, fdatasync, meta page written, fdatasync). A crash at any moment leaves
//     either the old or the new state.
//  5. Rekey draws a new key, writes it to KeyFile + ".new", re-encrypts every record in one
//     transaction that also records the new key id, then renames the new key file over the old one.
//     Open and every operation compare the database's key id with the key they hold, and pick up the
//     new key, from KeyFile or from a KeyFile + ".new" left by a rekey interrupted after its commit.
//
// Files created while running as root are given to the owner of their directory, so `postern
// project add` run by root does not lock out a sidecar that runs as its own user.
package boltstore

import (
	"bytes"
	"context"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/crypto/chacha20poly1305"

	"github.com/postern/postern/sidecar/backoff"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/store/internal/storefile"
)

// Default locations of the database and the key file: those of the file store it replaces.
const (
	DefaultPath    = "/var/lib/postern/store.db"
	DefaultKeyFile = "/var/lib/postern/store.key"
)

// KeySize is the size of the key in the key file, in bytes.
const KeySize = storefile.KeySize

// ErrDecrypt is wrapped by the error returned when a record cannot be decrypted: the key file does
// not belong to the store, or the database was changed or damaged.
var ErrDecrypt = errors.New("wrong key file or damaged store")

// ErrExists is wrapped by Create's error when the database or the key file exists already.
var ErrExists = storefile.ErrExists

// ErrNotExist is wrapped by the error Open returns when neither the database nor its key file
// exists: there is no store here. (One without the other is a different error: see Open.)
var ErrNotExist = storefile.ErrNotInitialized

const (
	formatVersion = 1
	headerSize    = 10
	flagTombstone = 1
	keyIDSize     = 16

	// lockTimeout bounds bbolt's own wait for its lock on the database file, which is only ever
	// contended by a process that does not take the lock file first (an older Postern).
	lockTimeout = 5 * time.Second
)

var (
	bucketMeta     = []byte("meta")
	bucketProjects = []byte("projects")
	bucketTokens   = []byte("tokens")
	metaFormat     = []byte("format")
	metaKeyID      = []byte("key_id")
	metaGeneration = []byte("generation")
	metaProjects   = []byte("projects")
)

// Options says where the store lives. The zero value opens the default files.
type Options struct {
	// Path is the database; empty means DefaultPath.
	Path string
	// KeyFile holds the 32-byte key; empty means DefaultKeyFile. It must not be readable by group or
	// others.
	KeyFile string
	// Create makes the missing directories, a new key file (mode 0600) and an empty database when
	// neither the database nor the key file exists (Created then reports true). One without the
	// other is always an error: a new key could never decrypt the database, and a new database would
	// silently replace the projects the key belongs to.
	Create bool
	// Logger receives the store's events (a migration, a rekey); nil discards them.
	Logger *slog.Logger
}

func (o *Options) defaults() {
	if o.Path == "" {
		o.Path = DefaultPath
	}
	if o.KeyFile == "" {
		o.KeyFile = DefaultKeyFile
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Store is the bbolt store. It is safe for concurrent use, and several Store values, in one process
// or many, may be open on the same files.
type Store struct {
	path, keyFile, lockPath string
	log                     *slog.Logger

	mu      sync.Mutex // guards the fields below
	key     *recordKey
	keyFrom string // the file key was read from: keyFile, or the new key file of a rekey
	closed  bool
	created bool
}

var _ store.Store = (*Store)(nil)

// recordKey is a store key ready for use.
type recordKey struct {
	aead cipher.AEAD
	id   []byte
}

func newRecordKey(key []byte) (*recordKey, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("a store key is %d bytes, not %d", KeySize, len(key))
	}
	rk, err := hkdf.Key(sha256.New, key, nil, "postern boltstore record key v1", chacha20poly1305.KeySize)
	if err != nil {
		return nil, err
	}
	aead, err := chacha20poly1305.NewX(rk)
	clear(rk)
	if err != nil {
		return nil, err
	}
	id, err := hkdf.Key(sha256.New, key, nil, "postern boltstore key id v1", keyIDSize)
	if err != nil {
		return nil, err
	}
	return &recordKey{aead: aead, id: id}, nil
}

// Open opens the store at o.Path; the database and its key file must both exist, unless
// o.Create allows making them where neither does. A data file in package filestore's format is
// migrated to the database first, the old file kept beside it with the suffix ".migrated". A store
// that lost its projects opens, logging why; its reads then fail with store.ErrProjectsLost.
func Open(ctx context.Context, o Options) (*Store, error) {
	o.defaults()
	s := newStore(o)
	mode := storefile.Open
	if o.Create {
		mode = storefile.Create
	}
	if err := storefile.CheckFiles(s.path, s.keyFile, mode); err != nil {
		return nil, err
	}
	if o.Create {
		if err := s.create(ctx, mode); err != nil {
			return nil, err
		}
		if s.created {
			return s, nil
		}
	}
	key, err := storefile.ReadKey(s.keyFile)
	if err != nil {
		return nil, err
	}
	defer clear(key)
	if s.key, err = newRecordKey(key); err != nil {
		return nil, fmt.Errorf("key file %s: %w", s.keyFile, err)
	}
	legacy, err := isLegacy(s.path)
	if err != nil {
		return nil, err
	}
	if legacy {
		if err := s.migrate(ctx, key); err != nil {
			return nil, err
		}
	}
	// Check the key and the format now, so that a wrong key file is reported at start.
	var ix storefile.Index
	err = s.view(ctx, func(tx *bolt.Tx) error {
		gen, live, err := counters(tx)
		ix = storefile.Index{Generation: gen, Projects: live}
		return err
	})
	if errors.Is(err, store.ErrProjectsLost) {
		// Open anyway, so that `postern serve` answers "try again later" until the database is
		// restored, and picks it up then; every read fails meanwhile.
		s.log.Error("the store lost its projects: mail is deferred until it is restored", "err", err)
		return s, nil
	}
	if err != nil {
		return nil, err
	}
	if s.keyFromNew() {
		if err := s.rollForward(ctx); err != nil {
			return nil, err
		}
	}
	if !storefile.HasIndex(s.path) {
		// A store written before the index existed: record what it holds now.
		if unlock, err := s.flock(ctx, true); err == nil {
			if !storefile.HasIndex(s.path) {
				storefile.WriteIndex(s.log, s.path, ix)
			}
			unlock()
		}
	}
	return s, nil
}

// Create makes a new, empty store at o.Path: the missing directories, a key file (mode 0600) and
// the database, and its index file. It refuses (ErrExists) when the database or the key file exists
// already, and never changes either; o.Create is ignored.
func Create(ctx context.Context, o Options) (*Store, error) {
	o.defaults()
	s := newStore(o)
	if err := storefile.CheckFiles(s.path, s.keyFile, storefile.Init); err != nil {
		return nil, fmt.Errorf("creating store: %w", err)
	}
	if err := s.create(ctx, storefile.Init); err != nil {
		return nil, fmt.Errorf("creating store: %w", err)
	}
	return s, nil
}

func newStore(o Options) *Store {
	return &Store{path: o.Path, keyFile: o.KeyFile, keyFrom: o.KeyFile, lockPath: o.Path + ".lock", log: o.Logger}
}

// Created reports whether this Open or Create made the store.
func (s *Store) Created() bool { return s.created }

// create makes the store under the exclusive lock when, checked again under it, neither file
// exists; with mode storefile.Create, both existing (another process made them meanwhile) is left
// to Open.
func (s *Store) create(ctx context.Context, mode storefile.Mode) error {
	for _, dir := range []string{filepath.Dir(s.path), filepath.Dir(s.keyFile)} {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return fmt.Errorf("creating directory %s: %w", dir, err)
		}
	}
	unlock, err := s.flock(ctx, true)
	if err != nil {
		return err
	}
	defer unlock()
	if err := storefile.CheckFiles(s.path, s.keyFile, mode); err != nil {
		return err
	}
	if missing, err := storefile.Missing(s.path); err != nil || !missing {
		return err
	}
	key, err := createKey(s.keyFile, "")
	if err != nil {
		return err
	}
	s.log.Info("created a new store key; back it up, the store cannot be read without it", "key_file", s.keyFile)
	s.key, err = newRecordKey(key)
	clear(key)
	if err != nil {
		return fmt.Errorf("key file %s: %w", s.keyFile, err)
	}
	ix := storefile.Index{Generation: 1}
	if err := buildAtomic(s.path, func(db *bolt.DB) error {
		return db.Update(func(tx *bolt.Tx) error { return initBuckets(tx, s.key, ix) })
	}, nil); err != nil {
		return fmt.Errorf("creating store %s: %w", s.path, err)
	}
	storefile.WriteIndex(s.log, s.path, ix)
	s.created = true
	s.log.Info("created an empty store", "path", s.path)
	return nil
}

// initBuckets makes the buckets and records the format, the key id and the counters of ix.
func initBuckets(tx *bolt.Tx, k *recordKey, ix storefile.Index) error {
	meta, err := tx.CreateBucketIfNotExists(bucketMeta)
	if err != nil {
		return err
	}
	if err := meta.Put(metaFormat, []byte{'0' + formatVersion}); err != nil {
		return err
	}
	if err := meta.Put(metaKeyID, k.id); err != nil {
		return err
	}
	for _, b := range [][]byte{bucketProjects, bucketTokens} {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return err
		}
	}
	return putCounters(meta, ix)
}

// counters reads the generation and the number of projects from the meta bucket. A database
// written before they were kept counts as generation 0, its projects counted now.
func counters(tx *bolt.Tx) (generation int64, live int, err error) {
	meta := tx.Bucket(bucketMeta)
	if v := meta.Get(metaGeneration); len(v) == 8 {
		generation = int64(binary.BigEndian.Uint64(v))
	}
	if v := meta.Get(metaProjects); len(v) == 8 {
		return generation, int(binary.BigEndian.Uint64(v)), nil
	}
	err = tx.Bucket(bucketProjects).ForEach(func(_, v []byte) error {
		exists, _, err := header(v)
		if exists {
			live++
		}
		return err
	})
	return generation, live, err
}

func putCounters(meta *bolt.Bucket, ix storefile.Index) error {
	var g, p [8]byte
	binary.BigEndian.PutUint64(g[:], uint64(ix.Generation))
	binary.BigEndian.PutUint64(p[:], uint64(max(ix.Projects, 0)))
	if err := meta.Put(metaGeneration, g[:]); err != nil {
		return err
	}
	return meta.Put(metaProjects, p[:])
}

// count records one more write in tx, which changed the number of projects by delta, and returns
// the index that describes the result.
func count(tx *bolt.Tx, delta int) (storefile.Index, error) {
	gen, live, err := counters(tx)
	if err != nil {
		return storefile.Index{}, err
	}
	ix := storefile.Index{Generation: gen + 1, Projects: max(live+delta, 0)}
	return ix, putCounters(tx.Bucket(bucketMeta), ix)
}

// checkLost fails with store.ErrProjectsLost when the database holds no project while its index
// file counted some at a later write. With projects in the database, the index file is not read.
func (s *Store) checkLost(tx *bolt.Tx) error {
	gen, live, err := counters(tx)
	if err != nil || live > 0 {
		return err
	}
	return storefile.CheckIndex(s.path, gen, live)
}

// buildAtomic makes a new database at path: fill runs on a database at a temporary name in the
// same directory, which is then synced, given mode 0600 (and, as root, the owner of the file it
// replaces or of the directory), and renamed to path, and the directory synced. path is replaced if
// it exists. beforeRename, when not nil, runs just before the rename; an error from it leaves path
// as it was.
func buildAtomic(path string, fill func(*bolt.DB) error, beforeRename func() error) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	f.Close()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	db, err := bolt.Open(tmp, 0o600, &bolt.Options{Timeout: lockTimeout})
	if err != nil {
		return err
	}
	if err = fill(db); err != nil {
		db.Close()
		return err
	}
	if err = db.Sync(); err != nil {
		db.Close()
		return err
	}
	if err = db.Close(); err != nil {
		return err
	}
	if err = finishFile(tmp, dir, path); err != nil {
		return err
	}
	if beforeRename != nil {
		if err = beforeRename(); err != nil {
			return err
		}
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(dir)
}

// finishFile gives the file at tmp mode 0600 and the owner path has (or, when path does not exist,
// the directory's, when running as root), and syncs it.
func finishFile(tmp, dir, path string) error {
	f, err := os.OpenFile(tmp, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Chmod(0o600); err != nil {
		return err
	}
	ref, err := os.Stat(path)
	if err != nil {
		ref = nil
	}
	if err := storefile.ChownLike(f, dir, ref); err != nil {
		return err
	}
	return f.Sync()
}

// Close marks the store closed; operations under way finish. Close may be called again.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}

// Path returns the database's path.
func (s *Store) Path() string { return s.path }

// Projects returns every project, sorted by name, each with its Version set.
func (s *Store) Projects(ctx context.Context) ([]project.Project, error) {
	var out []project.Project
	err := s.view(ctx, func(tx *bolt.Tx) error {
		k := s.currentKey()
		// Sized once: with 100,000 projects, growing the slice by appending alone would
		// allocate five times what it holds.
		_, live, err := counters(tx)
		if err != nil {
			return err
		}
		out = make([]project.Project, 0, live)
		return tx.Bucket(bucketProjects).ForEach(func(name, v []byte) error {
			plain, version, err := k.open(bucketProjects, name, v)
			if err != nil || plain == nil {
				return err
			}
			p, err := decodeProject(string(name), plain, version)
			if err != nil {
				return err
			}
			out = append(out, p)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// ProjectsStamp implements store.Stamper: a SHA-256 over the key id and every project record's
// name, header and nonce, read without decrypting anything. Every write seals its record under a new
// random nonce, so any change to a project record (a write, a delete, a rekey, a database restored
// or replaced) changes the stamp, and an unchanged store keeps it. 100,000 projects take a few
// milliseconds.
func (s *Store) ProjectsStamp(ctx context.Context) (string, error) {
	h := sha256.New()
	err := s.view(ctx, func(tx *bolt.Tx) error {
		h.Write(tx.Bucket(bucketMeta).Get(metaKeyID))
		nonce := s.currentKey().aead.NonceSize()
		buf := make([]byte, 0, 512)
		return tx.Bucket(bucketProjects).ForEach(func(name, v []byte) error {
			buf = binary.BigEndian.AppendUint32(buf[:0], uint32(len(name)))
			buf = append(append(buf, name...), v[:min(len(v), headerSize+nonce)]...)
			h.Write(buf)
			return nil
		})
	})
	if err != nil {
		return "", err
	}
	return string(h.Sum(nil)), nil
}

// Project returns one project with its Version set, or store.ErrNotFound.
func (s *Store) Project(ctx context.Context, name string) (project.Project, error) {
	var p project.Project
	err := s.view(ctx, func(tx *bolt.Tx) error {
		plain, version, err := s.currentKey().open(bucketProjects, []byte(name), tx.Bucket(bucketProjects).Get([]byte(name)))
		if err != nil {
			return err
		}
		if plain == nil {
			return fmt.Errorf("project %q: %w", name, store.ErrNotFound)
		}
		p, err = decodeProject(name, plain, version)
		return err
	})
	return p, err
}

func decodeProject(name string, plain []byte, version int) (project.Project, error) {
	p, err := project.UnmarshalStored(plain)
	clear(plain)
	if err != nil {
		return project.Project{}, fmt.Errorf("project %q: %w", name, err)
	}
	p.Name, p.Version = name, version
	return p, nil
}

// Token returns the token record of a project with its Version set, or store.ErrNotFound.
func (s *Store) Token(ctx context.Context, name string) (project.Token, error) {
	var t project.Token
	err := s.view(ctx, func(tx *bolt.Tx) error {
		plain, version, err := s.currentKey().open(bucketTokens, []byte(name), tx.Bucket(bucketTokens).Get([]byte(name)))
		if err != nil {
			return err
		}
		if plain == nil {
			return fmt.Errorf("token of project %q: %w", name, store.ErrNotFound)
		}
		t, err = project.UnmarshalStoredToken(plain)
		clear(plain)
		if err != nil {
			return fmt.Errorf("token of project %q: %w", name, err)
		}
		t.Version = version
		return nil
	})
	return t, err
}

// PutProject creates or replaces a project; when p.Version is not 0 only if the stored version is
// still p.Version. It returns the new version.
func (s *Store) PutProject(ctx context.Context, p project.Project) (int, error) {
	vs, err := s.PutProjects(ctx, []project.Project{p})
	if err != nil {
		return 0, err
	}
	return vs[0], nil
}

// PutProjects writes many projects in one transaction, for importing them: every entry is checked
// and versioned as PutProject would. It is all-or-nothing: an invalid name, a name given twice, or a
// version conflict (store.ErrConflict) on any entry writes none of them. It returns the new versions
// in the order of ps. An empty ps writes nothing.
func (s *Store) PutProjects(ctx context.Context, ps []project.Project) ([]int, error) {
	if len(ps) == 0 {
		return nil, nil
	}
	encoded := make([][]byte, len(ps))
	index := make(map[string]int, len(ps))
	for i, p := range ps {
		if j, dup := index[p.Name]; dup {
			return nil, fmt.Errorf("writing projects: %q is given twice (entries %d and %d)", p.Name, j+1, i+1)
		}
		index[p.Name] = i
		if !project.ValidName(p.Name) {
			return nil, fmt.Errorf("writing project: invalid name %q", p.Name)
		}
		b, err := project.MarshalStored(p)
		if err != nil {
			return nil, fmt.Errorf("encoding project %q: %w", p.Name, err)
		}
		encoded[i] = b
	}
	defer func() {
		for _, b := range encoded {
			clear(b)
		}
	}()
	versions := make([]int, len(ps))
	err := s.update(ctx, func(tx *bolt.Tx, k *recordKey) (int, error) {
		b := tx.Bucket(bucketProjects)
		added := 0
		for i, p := range ps {
			exists, current, err := header(b.Get([]byte(p.Name)))
			if err != nil {
				return 0, fmt.Errorf("project %q: %w", p.Name, err)
			}
			if p.Version != 0 && (!exists || current != p.Version) {
				return 0, fmt.Errorf("writing project %q at version %d: %w", p.Name, p.Version, store.ErrConflict)
			}
			if !exists {
				added++
			}
			versions[i] = current + 1
			if err := b.Put([]byte(p.Name), k.seal(bucketProjects, []byte(p.Name), versions[i], encoded[i])); err != nil {
				return 0, err
			}
		}
		return added, nil
	})
	if err != nil {
		return nil, err
	}
	return versions, nil
}

// PutToken writes t if the stored version is still t.Version (0: no token record may exist) and
// returns the new version; otherwise it returns store.ErrConflict and writes nothing.
func (s *Store) PutToken(ctx context.Context, name string, t project.Token) (int, error) {
	if !project.ValidName(name) {
		return 0, fmt.Errorf("writing token: invalid project name %q", name)
	}
	plain, err := project.MarshalStoredToken(t)
	if err != nil {
		return 0, fmt.Errorf("encoding token of project %q: %w", name, err)
	}
	defer clear(plain)
	var version int
	err = s.update(ctx, func(tx *bolt.Tx, k *recordKey) (int, error) {
		b := tx.Bucket(bucketTokens)
		exists, last, err := header(b.Get([]byte(name)))
		if err != nil {
			return 0, fmt.Errorf("token of project %q: %w", name, err)
		}
		current := 0
		if exists {
			current = last
		}
		if current != t.Version {
			return 0, fmt.Errorf("writing token of project %q at version %d: %w", name, t.Version, store.ErrConflict)
		}
		version = last + 1
		return 0, b.Put([]byte(name), k.seal(bucketTokens, []byte(name), version, plain))
	})
	return version, err
}

// DeleteProject removes a project and its token record. It returns store.ErrNotFound when neither
// exists.
func (s *Store) DeleteProject(ctx context.Context, name string) error {
	return s.update(ctx, func(tx *bolt.Tx, _ *recordKey) (int, error) {
		found, delta := false, 0
		for _, bucket := range [][]byte{bucketProjects, bucketTokens} {
			b := tx.Bucket(bucket)
			exists, version, err := header(b.Get([]byte(name)))
			if err != nil {
				return 0, fmt.Errorf("deleting project %q: %w", name, err)
			}
			if !exists {
				continue
			}
			found = true
			if bytes.Equal(bucket, bucketProjects) {
				delta = -1
			}
			if err := b.Put([]byte(name), tombstone(version)); err != nil {
				return 0, err
			}
		}
		if !found {
			return 0, fmt.Errorf("deleting project %q: %w", name, store.ErrNotFound)
		}
		return delta, nil
	})
}

// header reads a record's header: whether it exists (is neither missing nor a tombstone) and its
// version (0 when missing).
func header(v []byte) (exists bool, version int, err error) {
	if v == nil {
		return false, 0, nil
	}
	if len(v) < headerSize || v[0] != formatVersion {
		return false, 0, fmt.Errorf("unknown record format: %w", ErrDecrypt)
	}
	version = int(binary.BigEndian.Uint64(v[2:headerSize]))
	return v[1]&flagTombstone == 0, version, nil
}

func tombstone(version int) []byte {
	v := make([]byte, headerSize)
	v[0], v[1] = formatVersion, flagTombstone
	binary.BigEndian.PutUint64(v[2:], uint64(version))
	return v
}

// additional is the additional data a record is sealed with.
func additional(bucket, name, hdr []byte) []byte {
	ad := make([]byte, 0, len(bucket)+1+len(name)+1+len(hdr))
	ad = append(append(ad, bucket...), 0)
	ad = append(append(ad, name...), 0)
	return append(ad, hdr...)
}

// seal makes the record holding plain at version.
func (k *recordKey) seal(bucket, name []byte, version int, plain []byte) []byte {
	n := k.aead.NonceSize()
	v := make([]byte, headerSize+n, headerSize+n+len(plain)+k.aead.Overhead())
	v[0] = formatVersion
	binary.BigEndian.PutUint64(v[2:headerSize], uint64(version))
	if _, err := rand.Read(v[headerSize:]); err != nil {
		panic(err) // crypto/rand.Read never fails on Linux 3.17+; see its documentation.
	}
	return k.aead.Seal(v, v[headerSize:], plain, additional(bucket, name, v[:headerSize]))
}

// open decrypts the record v of name. It returns nil plain for a missing record or a tombstone.
func (k *recordKey) open(bucket, name, v []byte) (plain []byte, version int, err error) {
	exists, version, err := header(v)
	if err != nil {
		return nil, 0, fmt.Errorf("%s %q: %w", bucket, name, err)
	}
	if !exists {
		return nil, version, nil
	}
	n := k.aead.NonceSize()
	if len(v) < headerSize+n {
		return nil, 0, fmt.Errorf("%s %q is truncated: %w", bucket, name, ErrDecrypt)
	}
	plain, err = k.aead.Open(nil, v[headerSize:headerSize+n], v[headerSize+n:], additional(bucket, name, v[:headerSize]))
	if err != nil {
		return nil, 0, fmt.Errorf("cannot decrypt %s %q: %w", bucket, name, ErrDecrypt)
	}
	return plain, version, nil
}

func (s *Store) currentKey() *recordKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.key
}

// view runs fn in a read transaction, under a shared lock on the lock file. A store that lost its
// projects fails with store.ErrProjectsLost before fn runs.
func (s *Store) view(ctx context.Context, fn func(*bolt.Tx) error) error {
	return s.withDB(ctx, false, func(db *bolt.DB) error {
		return db.View(func(tx *bolt.Tx) error {
			if err := s.checkKey(tx); err != nil {
				return err
			}
			if err := s.checkLost(tx); err != nil {
				return err
			}
			return fn(tx)
		})
	})
}

// update runs fn in a write transaction, under an exclusive lock on the lock file, and commits
// unless fn returns an error; fn returns by how much it changed the number of projects. The write
// is counted in the meta bucket and then, still under the lock, in the index file. A store that
// lost its projects fails with store.ErrProjectsLost before fn runs.
func (s *Store) update(ctx context.Context, fn func(*bolt.Tx, *recordKey) (int, error)) error {
	return s.withDB(ctx, true, func(db *bolt.DB) error {
		var ix storefile.Index
		err := db.Update(func(tx *bolt.Tx) error {
			if err := s.checkKey(tx); err != nil {
				return err
			}
			if err := s.checkLost(tx); err != nil {
				return err
			}
			delta, err := fn(tx, s.currentKey())
			if err != nil {
				return err
			}
			ix, err = count(tx, delta)
			return err
		})
		if err != nil {
			return err
		}
		storefile.WriteIndex(s.log, s.path, ix)
		return nil
	})
}

// openNoCreate opens the database file as bbolt asks, but never creates it: a database deleted
// under a running Postern is reported, not replaced by a new, empty one.
func openNoCreate(name string, flag int, perm os.FileMode) (*os.File, error) {
	return os.OpenFile(name, flag&^os.O_CREATE, perm)
}

// withDB opens the database for one transaction, under the lock file.
func (s *Store) withDB(ctx context.Context, write bool, fn func(*bolt.DB) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return fmt.Errorf("store %s is closed", s.path)
	}
	unlock, err := s.flock(ctx, write)
	if err != nil {
		return err
	}
	defer unlock()
	db, err := bolt.Open(s.path, 0o600, &bolt.Options{ReadOnly: !write, Timeout: lockTimeout, OpenFile: openNoCreate})
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			if cerr := storefile.CheckFiles(s.path, s.keyFile, storefile.Open); cerr != nil {
				return cerr
			}
		}
		return fmt.Errorf("opening store %s: %w", s.path, err)
	}
	err = fn(db)
	if cerr := db.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("closing store %s: %w", s.path, cerr)
	}
	return err
}

// checkKey compares the database's format and key id with the key held, and loads the key the
// database is under when a rekey changed it.
func (s *Store) checkKey(tx *bolt.Tx) error {
	meta := tx.Bucket(bucketMeta)
	if meta == nil || tx.Bucket(bucketProjects) == nil || tx.Bucket(bucketTokens) == nil {
		return fmt.Errorf("%s is not a Postern store (buckets missing): %w", s.path, ErrDecrypt)
	}
	if f := meta.Get(metaFormat); !bytes.Equal(f, []byte{'0' + formatVersion}) {
		return fmt.Errorf("%s has store format %q, which this version of Postern does not know", s.path, f)
	}
	id := meta.Get(metaKeyID)
	s.mu.Lock()
	defer s.mu.Unlock()
	if bytes.Equal(id, s.key.id) {
		return nil
	}
	k, from, err := s.findKey(id)
	if err != nil {
		return err
	}
	s.key, s.keyFrom = k, from
	s.log.Info("the store was rekeyed; using the new key", "key_file", from)
	return nil
}

// findKey reads the key with the given id from the key file or from a rekey's new key file.
func (s *Store) findKey(id []byte) (*recordKey, string, error) {
	for _, path := range []string{s.keyFile, s.keyFile + newKeySuffix} {
		key, err := storefile.ReadKey(path)
		if err != nil {
			continue
		}
		k, err := newRecordKey(key)
		clear(key)
		if err == nil && bytes.Equal(k.id, id) {
			return k, path, nil
		}
	}
	return nil, "", fmt.Errorf("the key file %s does not belong to the store %s: %w", s.keyFile, s.path, ErrDecrypt)
}

// createKey writes a new random key to path, atomically, with mode 0600 and, as root, the owner of
// the file at like (or of the directory when like is empty or missing).
func createKey(path, like string) ([]byte, error) {
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("making a key: %w", err)
	}
	if err := writeFileAtomic(path, key, like); err != nil {
		return nil, fmt.Errorf("writing key file: %w", err)
	}
	return key, nil
}

// writeFileAtomic replaces path with b (package storefile's WriteAtomic). As root, the file gets
// the owner of the file at like, or of the file it replaces, or of the directory.
func writeFileAtomic(path string, b []byte, like string) error {
	if like == "" {
		like = path
	}
	ref, err := os.Stat(like)
	if err != nil {
		ref = nil
	}
	_, err = storefile.WriteAtomic(path, b, ref)
	return err
}

func syncDir(dir string) error { return storefile.SyncDir(dir) }

// flock takes the lock file's lock, shared or exclusive, on a descriptor of its own, waiting until
// it is free or ctx ends. Every operation uses its own descriptor, so the lock works between the
// goroutines of one process as it does between processes.
func (s *Store) flock(ctx context.Context, exclusive bool) (unlock func(), err error) {
	_, statErr := os.Stat(s.lockPath)
	f, err := os.OpenFile(s.lockPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock file: %w", err)
	}
	if errors.Is(statErr, fs.ErrNotExist) {
		if err := storefile.ChownLike(f, filepath.Dir(s.lockPath), nil); err != nil {
			f.Close()
			return nil, fmt.Errorf("opening lock file: %w", err)
		}
	}
	how := syscall.LOCK_SH
	if exclusive {
		how = syscall.LOCK_EX
	}
	fd := int(f.Fd())
	wait := backoff.Doubling{Min: 100 * time.Microsecond, Max: 20 * time.Millisecond}
	for failures := 1; ; failures++ {
		err := syscall.Flock(fd, how|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil // closing the descriptor releases the lock
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", s.lockPath, err)
		}
		t := time.NewTimer(wait.Delay(failures))
		select {
		case <-ctx.Done():
			t.Stop()
			f.Close()
			return nil, fmt.Errorf("waiting for the lock on %s: %w", s.lockPath, ctx.Err())
		case <-t.C:
		}
	}
}
