// Package filestore is the embedded encrypted store of earlier versions of Postern: every project
// and token record in one data file, encrypted as a whole under a key kept in a separate key file.
//
// Postern no longer opens it: the embedded store behind store.file is package boltstore, which
// reads this format itself to migrate such a data file (and carries its index file along) the first
// time any command opens it. The package stays as the reference of the format boltstore migrates,
// and tests use it to write data files to migrate; no other package imports it
// (TestDependencyDirection in package sidecar checks that). What it shares with boltstore (the
// missing-file refusals, the index file, key files) lives in store/internal/storefile.
//
// The data file is a header followed by ciphertext:
//
//	"POSTERN1" (8 bytes) | nonce (24 bytes) | XChaCha20-Poly1305(JSON of all records)
//
// The magic is authenticated as additional data, so any change to any byte of the file is detected.
// The JSON holds each record as project.MarshalStored / MarshalStoredToken wrote it, with its version.
// A deleted record leaves a tombstone carrying its last version, so a re-created record continues the
// count and a writer holding a version read before the delete still gets store.ErrConflict.
//
//  1. Open checks the key file (32 bytes, mode 0600 or stricter) and decrypts the data file once.
//     It never makes a store unless asked: a missing key file or data file is an error naming the
//     path and the fix (ErrNotInitialized when both are missing). Init (`postern init`) makes a new
//     key and an empty store and refuses when either file exists; Options.Create (the first
//     `postern project add`) does the same when both are missing. A key without its data file, or a
//     data file without its key, is always an error: nothing that holds state is replaced by a new,
//     empty one.
//  2. Beside the data file, the index file (Path + ".index", plain JSON, no secrets; see package
//     storefile) records the generation of the last write (a counter the data file carries too,
//     authenticated) and how many projects it left. When the data file holds no project but is older than the index, and the
//     index counted projects, the data file was replaced or rolled back (an empty copy restored, a
//     volume swapped): every read fails with store.ErrProjectsLost instead of answering "no
//     projects", so mail is deferred, never rerouted or bounced. Removing the last project with
//     DeleteProject updates both, so the store is then empty on purpose. A crash between the two
//     writes leaves the data newer than the index, which is accepted. A store written before the
//     index existed gets one at Open.
//  3. Every read opens the data file and compares its inode, size, modification time and the nonce in
//     its header with those of the version last decrypted. Each write draws a fresh nonce, so a change
//     is seen even when the file system's clock is too coarse to show one: the file is decrypted
//     again. An unchanged file costs an open, an fstat and a 32-byte read.
//  4. Every write takes an flock on the lock file beside the data file (Path + ".lock"), re-reads the
//     file under the lock, applies the check-and-set, and replaces the file atomically: a temporary file
//     in the same directory, fsync, rename, fsync of the directory. Writers in other processes
//     (`postern project add` while `postern serve` runs) wait for the lock; readers never wait, since
//     they always see either the old file or the new one. PutProjects writes many projects in one
//     such replacement.
//
// Files created while running as root are given to the owner of their directory (and a replaced data
// file keeps its owner), so `postern project add` run by root does not lock out a sidecar that runs
// as its own user.
package filestore

import (
	"bytes"
	"context"
	"crypto/cipher"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/store/internal/storefile"
)

// Default locations of the data file and the key file.
const (
	DefaultPath    = "/var/lib/postern/store.db"
	DefaultKeyFile = "/var/lib/postern/store.key"
)

// KeySize is the size of the key in the key file, in bytes.
const KeySize = storefile.KeySize

const (
	magic      = "POSTERN1"
	headerSize = len(magic) + chacha20poly1305.NonceSizeX
)

// ErrDecrypt is wrapped by the error returned when the data file cannot be decrypted: the key file
// does not belong to it, or the file was changed or damaged.
var ErrDecrypt = errors.New("wrong key file or damaged store")

// ErrNotInitialized is wrapped by Open's error when neither the key file nor the data file exists.
var ErrNotInitialized = storefile.ErrNotInitialized

// ErrExists is wrapped by Init's error when the key file or the data file already exists.
var ErrExists = storefile.ErrExists

// Options says where the store lives. The zero value opens the default files and creates nothing.
type Options struct {
	// Path is the data file; empty means DefaultPath.
	Path string
	// KeyFile holds the 32-byte key; empty means DefaultKeyFile. It must not be readable by group or
	// others.
	KeyFile string
	// Create makes the missing directories, a new key file (mode 0600) and an empty data file when
	// neither file exists yet (Created then reports true). One file without the other is always an
	// error: a new key could never decrypt the data file, and a new data file would silently replace
	// the projects the key belongs to.
	Create bool
	// Logger receives the store's events; nil discards them.
	Logger *slog.Logger
}

// Store is the file store. It is safe for concurrent use, and several Store values, in one process
// or many, may be open on the same files.
type Store struct {
	path, keyFile, lockPath string
	aead                    cipher.AEAD
	log                     *slog.Logger
	created                 bool

	// writeMu serializes this process's writers before they take the file lock.
	writeMu sync.Mutex

	mu  sync.Mutex // guards the fields below
	cur *snapshot  // the data last read or written
	// lastRead is the identity of the data file refresh last opened.
	lastRead fileID
	lock     *os.File // the lock file, held open while the store is
	closed   bool
}

var _ store.Store = (*Store)(nil)

// snapshot is one decrypted version of the data file.
type snapshot struct {
	nonce []byte
	id    fileID
	data  fileData
}

// fileID tells versions of the data file apart without reading them.
type fileID struct {
	ino, size int64
	mtime     time.Time
}

func idOf(fi fs.FileInfo) fileID {
	id := fileID{size: fi.Size(), mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		id.ino = int64(st.Ino)
	}
	return id
}

// fileData is the plaintext: every record by name, and the number of writes since the store was
// made (0 in stores written before it was counted).
type fileData struct {
	Generation int64             `json:"generation,omitempty"`
	Projects   map[string]record `json:"projects"`
	Tokens     map[string]record `json:"tokens"`
}

// live counts the projects that exist.
func (d fileData) live() int {
	n := 0
	for _, r := range d.Projects {
		if r.exists() {
			n++
		}
	}
	return n
}

// record is one stored record. Data is nil for a tombstone.
type record struct {
	Version int             `json:"version"`
	Data    json.RawMessage `json:"data,omitempty"`
}

func (r record) exists() bool { return r.Data != nil }

// clone copies the maps; records are never changed in place, so they are shared.
func (d fileData) clone() fileData {
	c := fileData{Generation: d.Generation, Projects: make(map[string]record, len(d.Projects)), Tokens: make(map[string]record, len(d.Tokens))}
	maps.Copy(c.Projects, d.Projects)
	maps.Copy(c.Tokens, d.Tokens)
	return c
}

// Open opens the store described by o, creating it only if o.Create allows and neither file
// exists, and decrypts it once so that a wrong key or a damaged file is reported now.
func Open(ctx context.Context, o Options) (*Store, error) {
	return openFiles(ctx, o, false)
}

// Init makes a new store: the missing directories, a new key file and an empty data file. It refuses
// (ErrExists) when the key file or the data file exists already, and never changes either.
func Init(ctx context.Context, o Options) (*Store, error) {
	return openFiles(ctx, o, true)
}

func openFiles(ctx context.Context, o Options, initOnly bool) (*Store, error) {
	s := &Store{path: o.Path, keyFile: o.KeyFile, log: o.Logger}
	if s.path == "" {
		s.path = DefaultPath
	}
	if s.keyFile == "" {
		s.keyFile = DefaultKeyFile
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.lockPath = s.path + ".lock"
	create := o.Create || initOnly

	// Refuse before making anything (even the lock file) when nothing may be created.
	if err := s.check(create, initOnly); err != nil {
		return nil, err
	}
	if create {
		for _, dir := range []string{filepath.Dir(s.path), filepath.Dir(s.keyFile)} {
			if err := os.MkdirAll(dir, 0o750); err != nil {
				return nil, fmt.Errorf("creating directory %s: %w", dir, err)
			}
		}
	}
	lock, err := openLockFile(s.lockPath)
	if err != nil {
		return nil, err
	}
	s.lock = lock
	if err := s.setUp(ctx, create, initOnly); err != nil {
		lock.Close()
		return nil, err
	}
	return s, nil
}

// Created reports whether this Open or Init made the store.
func (s *Store) Created() bool { return s.created }

// check refuses every combination of existing files but "both" (open), and "neither" when create
// is set. initOnly refuses "both" too.
func (s *Store) check(create, initOnly bool) error {
	mode := storefile.Open
	switch {
	case initOnly:
		mode = storefile.Init
	case create:
		mode = storefile.Create
	}
	return storefile.CheckFiles(s.path, s.keyFile, mode)
}

// setUp makes or checks the key file and the data file under the file lock (another process may
// have made them since check), then reads the data.
func (s *Store) setUp(ctx context.Context, create, initOnly bool) error {
	unlock, err := s.flock(ctx)
	if err != nil {
		return err
	}
	defer unlock()

	if err := s.check(create, initOnly); err != nil {
		return err
	}
	dataMissing, err := storefile.Missing(s.path)
	if err != nil {
		return fmt.Errorf("opening store: %w", err)
	}
	if dataMissing { // and the key file too: check allowed creating both
		if err := s.createKey(); err != nil {
			return err
		}
	}
	key, err := storefile.ReadKey(s.keyFile)
	if err != nil {
		return err
	}
	if s.aead, err = chacha20poly1305.NewX(key); err != nil {
		return fmt.Errorf("key file %s: %w", s.keyFile, err)
	}
	if dataMissing {
		empty := fileData{Projects: map[string]record{}, Tokens: map[string]record{}}
		if err := s.write(empty); err != nil {
			return err
		}
		s.created = true
		s.log.Info("created an empty store", "path", s.path)
		return nil
	}
	snap, err := s.refresh()
	if errors.Is(err, store.ErrProjectsLost) {
		// Open anyway, so that `postern serve` answers "try again later" until the data file is
		// restored, and picks it up then; every read fails meanwhile.
		s.log.Error("the store lost its projects: mail is deferred until it is restored", "err", err)
		return nil
	}
	if err != nil {
		return err
	}
	if !storefile.HasIndex(s.path) {
		// A store written before the index existed: record what it holds now.
		s.writeIndex(snap.data)
	}
	return nil
}

// createKey writes a new random key, atomically, with mode 0600.
func (s *Store) createKey() error {
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("making a key: %w", err)
	}
	if _, err := storefile.WriteAtomic(s.keyFile, key, nil); err != nil {
		return fmt.Errorf("writing key file: %w", err)
	}
	s.log.Info("created a new store key; back it up, the store cannot be read without it", "key_file", s.keyFile)
	return nil
}

// Close waits for a write in progress and releases the lock file. Further calls fail; Close itself
// may be called again.
func (s *Store) Close() error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.cur = nil
	return s.lock.Close()
}

// Projects returns every project, sorted by name, each with its Version set.
func (s *Store) Projects(ctx context.Context) ([]project.Project, error) {
	snap, err := s.read(ctx)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(snap.data.Projects))
	for name, r := range snap.data.Projects {
		if r.exists() {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	out := make([]project.Project, 0, len(names))
	for _, name := range names {
		p, err := decodeProject(name, snap.data.Projects[name])
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// Project returns one project with its Version set, or store.ErrNotFound.
func (s *Store) Project(ctx context.Context, name string) (project.Project, error) {
	snap, err := s.read(ctx)
	if err != nil {
		return project.Project{}, err
	}
	r, ok := snap.data.Projects[name]
	if !ok || !r.exists() {
		return project.Project{}, fmt.Errorf("project %q: %w", name, store.ErrNotFound)
	}
	return decodeProject(name, r)
}

// Token returns the token record of a project with its Version set, or store.ErrNotFound.
func (s *Store) Token(ctx context.Context, name string) (project.Token, error) {
	snap, err := s.read(ctx)
	if err != nil {
		return project.Token{}, err
	}
	r, ok := snap.data.Tokens[name]
	if !ok || !r.exists() {
		return project.Token{}, fmt.Errorf("token of project %q: %w", name, store.ErrNotFound)
	}
	t, err := project.UnmarshalStoredToken(r.Data)
	if err != nil {
		return project.Token{}, fmt.Errorf("token of project %q: %w", name, err)
	}
	t.Version = r.Version
	return t, nil
}

func decodeProject(name string, r record) (project.Project, error) {
	p, err := project.UnmarshalStored(r.Data)
	if err != nil {
		return project.Project{}, fmt.Errorf("project %q: %w", name, err)
	}
	p.Name = name
	p.Version = r.Version
	return p, nil
}

// PutProject creates or replaces a project; when p.Version is not 0 only if the stored version is
// still p.Version. It returns the new version.
func (s *Store) PutProject(ctx context.Context, p project.Project) (int, error) {
	b, err := encodeProject(p)
	if err != nil {
		return 0, err
	}
	var version int
	err = s.update(ctx, func(d *fileData) error {
		v, err := putProject(d, p, b)
		version = v
		return err
	})
	return version, err
}

// PutProjects writes many projects at once, for importing them: every entry is checked and
// versioned as PutProject would, and all of them are written in one replacement of the data file, so
// writing n projects costs one encryption and one fsync instead of n. It is all-or-nothing: an
// invalid name, a name given twice, or a version conflict (store.ErrConflict) on any entry writes
// none of them. It returns the new versions in the order of ps. An empty ps writes nothing.
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
		b, err := encodeProject(p)
		if err != nil {
			return nil, err
		}
		encoded[i] = b
	}
	versions := make([]int, len(ps))
	err := s.update(ctx, func(d *fileData) error {
		for i, p := range ps {
			v, err := putProject(d, p, encoded[i])
			if err != nil {
				return err
			}
			versions[i] = v
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return versions, nil
}

// encodeProject checks p's name and encodes p for storage.
func encodeProject(p project.Project) ([]byte, error) {
	if !project.ValidName(p.Name) {
		return nil, fmt.Errorf("writing project: invalid name %q", p.Name)
	}
	b, err := project.MarshalStored(p)
	if err != nil {
		return nil, fmt.Errorf("encoding project %q: %w", p.Name, err)
	}
	return b, nil
}

// putProject is the check-and-set of one project write on d, b being p encoded. It returns the new
// version.
func putProject(d *fileData, p project.Project, b []byte) (int, error) {
	old := d.Projects[p.Name]
	if p.Version != 0 && (!old.exists() || old.Version != p.Version) {
		return 0, fmt.Errorf("writing project %q at version %d: %w", p.Name, p.Version, store.ErrConflict)
	}
	version := old.Version + 1
	d.Projects[p.Name] = record{Version: version, Data: b}
	return version, nil
}

// PutToken writes t if the stored version is still t.Version (0: no token record may exist) and
// returns the new version; otherwise it returns store.ErrConflict and writes nothing.
func (s *Store) PutToken(ctx context.Context, name string, t project.Token) (int, error) {
	if !project.ValidName(name) {
		return 0, fmt.Errorf("writing token: invalid project name %q", name)
	}
	b, err := project.MarshalStoredToken(t)
	if err != nil {
		return 0, fmt.Errorf("encoding token of project %q: %w", name, err)
	}
	var version int
	err = s.update(ctx, func(d *fileData) error {
		old := d.Tokens[name]
		current := 0
		if old.exists() {
			current = old.Version
		}
		if current != t.Version {
			return fmt.Errorf("writing token of project %q at version %d: %w", name, t.Version, store.ErrConflict)
		}
		version = old.Version + 1
		d.Tokens[name] = record{Version: version, Data: b}
		return nil
	})
	return version, err
}

// DeleteProject removes a project and its token record. It returns store.ErrNotFound when neither
// exists.
func (s *Store) DeleteProject(ctx context.Context, name string) error {
	return s.update(ctx, func(d *fileData) error {
		p, t := d.Projects[name], d.Tokens[name]
		if !p.exists() && !t.exists() {
			return fmt.Errorf("deleting project %q: %w", name, store.ErrNotFound)
		}
		if p.exists() {
			d.Projects[name] = record{Version: p.Version}
		}
		if t.exists() {
			d.Tokens[name] = record{Version: t.Version}
		}
		return nil
	})
}

// read returns the current data, decrypting the file again if it changed since it was last read.
func (s *Store) read(ctx context.Context) (*snapshot, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return s.refresh()
}

// refresh compares the file's nonce with the cached one and decrypts the file if they differ.
func (s *Store) refresh() (*snapshot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for tries := 0; ; tries++ {
		snap, err := s.refreshLocked()
		if err == nil || !errors.Is(err, store.ErrProjectsLost) || tries == 2 {
			return snap, err
		}
		// A writer may have replaced the data file and then the index between this read's two
		// reads: the file read is then the one before, and reading again settles it.
		if fi, serr := os.Stat(s.path); serr != nil || s.lastRead == idOf(fi) {
			return snap, err
		}
	}
}

// refreshLocked is one attempt of refresh; the caller holds s.mu.
func (s *Store) refreshLocked() (*snapshot, error) {
	if s.closed {
		return nil, fmt.Errorf("store %s is closed", s.path)
	}
	f, err := os.Open(s.path)
	if err != nil {
		return nil, fmt.Errorf("reading store: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("reading store: %w", err)
	}
	id := idOf(fi)
	s.lastRead = id
	header := make([]byte, headerSize)
	if _, err := io.ReadFull(f, header); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("store %s is truncated: %w", s.path, ErrDecrypt)
		}
		return nil, fmt.Errorf("reading store %s: %w", s.path, err)
	}
	if string(header[:len(magic)]) != magic {
		return nil, fmt.Errorf("%s is not a Postern store (bad header): %w", s.path, ErrDecrypt)
	}
	nonce := header[len(magic):]
	if s.cur != nil && s.cur.id == id && bytes.Equal(s.cur.nonce, nonce) {
		return s.cur, nil
	}
	ciphertext, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("reading store %s: %w", s.path, err)
	}
	plain, err := s.aead.Open(nil, nonce, ciphertext, header[:len(magic)])
	if err != nil {
		return nil, fmt.Errorf("cannot decrypt %s: %w", s.path, ErrDecrypt)
	}
	var d fileData
	if err := json.Unmarshal(plain, &d); err != nil {
		return nil, fmt.Errorf("decoding store %s: %w", s.path, err)
	}
	if d.Projects == nil {
		d.Projects = map[string]record{}
	}
	if d.Tokens == nil {
		d.Tokens = map[string]record{}
	}
	if err := s.checkIndex(d); err != nil {
		return nil, err
	}
	if s.cur != nil {
		s.log.Debug("store changed on disk, reloaded", "path", s.path)
	}
	s.cur = &snapshot{nonce: nonce, id: id, data: d}
	return s.cur, nil
}

// update runs change on a fresh copy of the data under the file lock and writes the result, unless
// change returns an error.
func (s *Store) update(ctx context.Context, change func(*fileData) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	unlock, err := s.flock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	snap, err := s.refresh()
	if err != nil {
		return err
	}
	d := snap.data.clone()
	if err := change(&d); err != nil {
		return err
	}
	return s.write(d)
}

// write encrypts d, with the next generation, under a fresh nonce, replaces the data file, then
// the index file. The caller holds the file lock.
func (s *Store) write(d fileData) error {
	d.Generation++
	plain, err := json.Marshal(d)
	if err != nil {
		return fmt.Errorf("encoding store: %w", err)
	}
	nonce := make([]byte, chacha20poly1305.NonceSizeX)
	if _, err := rand.Read(nonce); err != nil {
		return fmt.Errorf("making a nonce: %w", err)
	}
	buf := make([]byte, 0, headerSize+len(plain)+s.aead.Overhead())
	buf = append(buf, magic...)
	buf = append(buf, nonce...)
	buf = s.aead.Seal(buf, nonce, plain, []byte(magic))
	clear(plain)

	owner, err := os.Stat(s.path)
	if err != nil {
		owner = nil
	}
	fi, err := storefile.WriteAtomic(s.path, buf, owner)
	if err != nil {
		return fmt.Errorf("writing store: %w", err)
	}
	s.mu.Lock()
	if !s.closed {
		s.cur = &snapshot{nonce: nonce, id: idOf(fi), data: d}
	}
	s.mu.Unlock()
	s.writeIndex(d)
	return nil
}

// writeIndex records d's generation and project count in the index file.
func (s *Store) writeIndex(d fileData) {
	storefile.WriteIndex(s.log, s.path, storefile.Index{Generation: d.Generation, Projects: d.live()})
}

// checkIndex refuses data that holds no project while the index file says the store held some at
// a later generation: the data file was replaced by an empty or older one.
func (s *Store) checkIndex(d fileData) error {
	return storefile.CheckIndex(s.path, d.Generation, d.live())
}

// openLockFile opens (creating) the lock file beside the data file.
func openLockFile(path string) (*os.File, error) {
	_, statErr := os.Stat(path)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock file: %w", err)
	}
	if errors.Is(statErr, fs.ErrNotExist) {
		if err := storefile.ChownLike(f, filepath.Dir(path), nil); err != nil {
			f.Close()
			return nil, fmt.Errorf("opening lock file: %w", err)
		}
	}
	return f, nil
}

// flock takes the exclusive lock on the lock file, waiting until it is free or ctx ends.
func (s *Store) flock(ctx context.Context) (unlock func(), err error) {
	s.mu.Lock()
	closed, lock := s.closed, s.lock
	s.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("store %s is closed", s.path)
	}
	fd := int(lock.Fd())
	wait := time.Millisecond
	for {
		err := syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { syscall.Flock(fd, syscall.LOCK_UN) }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			return nil, fmt.Errorf("locking %s: %w", s.lockPath, err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("waiting for the lock on %s: %w", s.lockPath, ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, 50*time.Millisecond)
	}
}
