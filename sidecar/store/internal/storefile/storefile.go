// Package storefile is what the embedded stores share about their files on disk: package boltstore,
// Postern's embedded store, and package filestore, the single-file store of earlier versions whose
// data files boltstore migrates. Both keep a data file and a key file at configured paths, and an
// index file beside the data file.
//
//  1. CheckFiles decides, from which of the data file and the key file exist, whether a store may be
//     opened, created or neither. Nothing ever makes a store unless asked: a missing file is an error
//     naming the path and the fix (ErrNotInitialized when both are missing, so that a caller allowed
//     to create one can tell). One file without the other is always an error: a new key could never
//     decrypt the data, and a new data file would silently replace the projects the key belongs to.
//  2. The index file (data file path + ".index", plain JSON, no secrets) records the generation of
//     the store's last write (a counter the data file carries too, authenticated) and how many
//     projects that write left. The index lives outside the data file, so an older or empty copy of
//     the data file put back (a backup restored over it, a volume swapped) cannot bring its own index
//     along: CheckIndex then refuses a data file that holds no project while the index, at a later
//     generation, counted some, with store.ErrProjectsLost. The stores write the index after every
//     write of the data, under their write lock; a crash between the two leaves the data newer than
//     the index, which is accepted.
//  3. ReadKey reads a key file (32 bytes, mode 0600 or stricter); WriteAtomic replaces a file through
//     a temporary file, fsync and rename, giving it, when running as root, the owner of the file it
//     replaces or of its directory, so that a command run by root does not lock out a sidecar that
//     runs as its own user.
package storefile

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"

	"github.com/postern/postern/sidecar/store"
)

// KeySize is the size of the key in a key file, in bytes.
const KeySize = 32

// IndexSuffix is appended to the data file's path to name its index file.
const IndexSuffix = ".index"

// ErrNotInitialized is wrapped by CheckFiles' error when neither the key file nor the data file
// exists.
var ErrNotInitialized = errors.New("no store here")

// ErrExists is wrapped by CheckFiles' error when a store is to be made where its key file or data
// file exists already.
var ErrExists = errors.New("a store already exists")

// How CheckFiles treats missing files.
type Mode int

const (
	// Open requires both files.
	Open Mode = iota
	// Create accepts both files, or neither (the store is then to be made).
	Create
	// Init requires neither file: `postern init` never replaces anything.
	Init
)

// CheckFiles looks at which of the key file and the data file at path exist, and refuses every
// combination mode does not allow, naming the paths and the fix.
func CheckFiles(path, keyFile string, mode Mode) error {
	keyMissing, err := Missing(keyFile)
	if err != nil {
		return fmt.Errorf("opening store: key file: %w", err)
	}
	dataMissing, err := Missing(path)
	if err != nil {
		return fmt.Errorf("opening store: %w", err)
	}
	initOnly := mode == Init
	switch {
	case initOnly && !keyMissing && !dataMissing:
		return fmt.Errorf("store %s and its key file %s exist: %w; `postern init` never replaces them", path, keyFile, ErrExists)
	case initOnly && !keyMissing:
		return fmt.Errorf("key file %s exists: %w (its data file %s is missing: restore it from backup, or mount the volume that holds it)", keyFile, ErrExists, path)
	case initOnly && !dataMissing:
		return fmt.Errorf("store %s exists: %w (its key file %s is missing: restore it from backup)", path, ErrExists, keyFile)
	case keyMissing && dataMissing && mode == Open:
		return fmt.Errorf("neither the store %s nor its key file %s exists: %w. If Postern has not run here before, create the store with `postern init`; if it has, the volume holding them is not mounted or they were deleted: mount it or restore both from backup (starting with a new, empty store would drop every project)",
			path, keyFile, ErrNotInitialized)
	case keyMissing && !dataMissing:
		return fmt.Errorf("key file %s does not exist, but the store %s does: the store cannot be read without the key it was written with; restore the key file from backup or mount the volume that holds it", keyFile, path)
	case !keyMissing && dataMissing:
		return fmt.Errorf("store %s does not exist, but its key file %s does: restore the data file from backup or mount the volume that holds it; Postern never replaces a store's data with an empty one", path, keyFile)
	}
	return nil
}

// Missing reports whether path does not exist.
func Missing(path string) (bool, error) {
	_, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return true, nil
	}
	return false, err
}

// Index is the content of the index file.
type Index struct {
	// Generation counts the store's writes: that of the last write.
	Generation int64 `json:"generation"`
	// Projects is how many projects the last write left.
	Projects int `json:"projects"`
}

// IndexPath is the path of the index file of the data file at path.
func IndexPath(path string) string { return path + IndexSuffix }

// WriteIndex records ix in the index file of the data file at path. The data is written already,
// so a failure is logged, not returned: the next write tries again, and until then the index is
// older than the data, which CheckIndex accepts.
func WriteIndex(log *slog.Logger, path string, ix Index) {
	indexPath := IndexPath(path)
	b, err := json.Marshal(ix)
	if err == nil {
		owner, _ := os.Stat(path)
		_, err = WriteAtomic(indexPath, append(b, '\n'), owner)
	}
	if err != nil {
		log.Warn("writing the store's index file failed", "path", indexPath, "err", err)
	}
}

// HasIndex reports whether the data file at path has an index file.
func HasIndex(path string) bool {
	missing, err := Missing(IndexPath(path))
	return err == nil && !missing
}

// CheckIndex refuses, with store.ErrProjectsLost, data at the given generation holding live
// projects when the index file says the store held some at a later generation and live is 0: the
// data file was replaced by an empty or older one. A missing index file accepts anything.
func CheckIndex(path string, generation int64, live int) error {
	indexPath := IndexPath(path)
	b, err := os.ReadFile(indexPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading the store's index file: %w", err)
	}
	var ix Index
	if err := json.Unmarshal(b, &ix); err != nil {
		return fmt.Errorf("the store's index file %s is damaged (%v): remove it if the data file %s is the one to keep", indexPath, err, path)
	}
	if ix.Generation <= generation || live > 0 || ix.Projects == 0 {
		return nil
	}
	return fmt.Errorf("the store %s holds no project, but its index file %s says it held %d at a later write (generation %d, the data file is at %d): the data file was replaced or rolled back. Restore it from backup or mount the right volume; if the store is meant to be empty, remove %s: %w",
		path, indexPath, ix.Projects, ix.Generation, generation, indexPath, store.ErrProjectsLost)
}

// ReadKey reads and checks a key file.
func ReadKey(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("reading key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("key file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("key file %s is readable by group or others (mode %04o): chmod 600 %s", path, perm, path)
	}
	key, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading key file: %w", err)
	}
	if len(key) != KeySize {
		return nil, fmt.Errorf("key file %s holds %d bytes, not %d: it is not a Postern store key", path, len(key), KeySize)
	}
	return key, nil
}

// WriteAtomic replaces path with b: a temporary file in the same directory (mode 0600), fsync,
// rename, fsync of the directory. When running as root, the file gets the owner of ref, or of the
// directory when ref is nil. It returns what fstat said of the new file.
func WriteAtomic(path string, b []byte, ref fs.FileInfo) (fi fs.FileInfo, err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err = f.Chmod(0o600); err != nil {
		return nil, err
	}
	if err = ChownLike(f, dir, ref); err != nil {
		return nil, err
	}
	if _, err = f.Write(b); err != nil {
		return nil, err
	}
	if err = f.Sync(); err != nil {
		return nil, err
	}
	if fi, err = f.Stat(); err != nil {
		return nil, err
	}
	if err = f.Close(); err != nil {
		return nil, err
	}
	if err = os.Rename(f.Name(), path); err != nil {
		return nil, err
	}
	return fi, SyncDir(dir)
}

// SyncDir flushes a directory's entries (a rename in it) to disk.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// ChownLike gives f the owner and group of ref (or of dir when ref is nil), if this process runs as
// root and they differ. Other users cannot give files away, and need not.
func ChownLike(f *os.File, dir string, ref fs.FileInfo) error {
	if os.Geteuid() != 0 {
		return nil
	}
	if ref == nil {
		var err error
		if ref, err = os.Stat(dir); err != nil {
			return err
		}
	}
	st, ok := ref.Sys().(*syscall.Stat_t)
	if !ok || (st.Uid == 0 && st.Gid == 0) {
		return nil
	}
	return f.Chown(int(st.Uid), int(st.Gid))
}
