// Package proto is the generated gRPC code for credential.proto, the wire contract between Postern
// and an out-of-process credential provider. Go providers use package plugin instead.
package proto

//go:generate ./generate.sh
