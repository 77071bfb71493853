package plugin

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	goplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/postern/postern/plugin/proto"
)

// PluginName is the name the provider is dispensed under in go-plugin's plugin set.
const PluginName = "credential"

// Handshake is the go-plugin handshake Postern and a provider must agree on. ProtocolVersion
// changes only when the contract in proto/credential.proto breaks; the magic cookie only stops a
// provider binary from being run by hand, it is not a secret.
var Handshake = goplugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "POSTERN_CREDENTIAL_PROVIDER",
	MagicCookieValue: "8c3d0f1e6b9a4e27a5d2c4f07e1b93d6",
}

// GRPCPlugin is the go-plugin glue for a Provider: on the provider's side it serves Impl over
// gRPC, on the host's side it returns a Provider that calls the provider process.
type GRPCPlugin struct {
	goplugin.NetRPCUnsupportedPlugin
	// Impl is the provider being served; unused on the host's side.
	Impl Provider
}

var _ goplugin.GRPCPlugin = (*GRPCPlugin)(nil)

// GRPCServer registers Impl with the provider's gRPC server.
func (p *GRPCPlugin) GRPCServer(_ *goplugin.GRPCBroker, s *grpc.Server) error {
	if p.Impl == nil {
		return errors.New("plugin: GRPCPlugin.Impl is nil")
	}
	pb.RegisterCredentialProviderServer(s, &grpcServer{impl: p.Impl})
	return nil
}

// GRPCClient returns a Provider that calls the provider process over conn.
func (p *GRPCPlugin) GRPCClient(_ context.Context, _ *goplugin.GRPCBroker, conn *grpc.ClientConn) (any, error) {
	return &grpcClient{c: pb.NewCredentialProviderClient(conn)}, nil
}

// pluginSet is the plugin set both sides use.
func pluginSet(impl Provider) goplugin.PluginSet {
	return goplugin.PluginSet{PluginName: &GRPCPlugin{Impl: impl}}
}

// grpcServer runs in the provider process and turns gRPC calls into Provider calls.
type grpcServer struct {
	pb.UnimplementedCredentialProviderServer
	impl Provider
}

func (s *grpcServer) Credential(ctx context.Context, r *pb.CredentialRequest) (*pb.CredentialResponse, error) {
	c, err := s.impl.Credential(ctx, Request{
		Project:      r.GetProject(),
		Username:     r.GetUsername(),
		Config:       r.GetConfig(),
		ForceRefresh: r.GetForceRefresh(),
	})
	if err != nil {
		if st := contextStatus(ctx, err); st != nil {
			return nil, st
		}
		kind, reason := errorKind(err)
		return &pb.CredentialResponse{Error: kind, Reason: reason}, nil
	}
	var expiry int64
	if !c.Expiry.IsZero() {
		expiry = c.Expiry.Unix()
	}
	return &pb.CredentialResponse{
		Mechanism: c.Mechanism,
		Username:  c.Username,
		Secret:    c.Secret.Reveal(),
		Expiry:    expiry,
	}, nil
}

func (s *grpcServer) Rejected(ctx context.Context, r *pb.RejectedRequest) (*pb.RejectedResponse, error) {
	err := s.impl.Rejected(ctx, RejectedRequest{
		Project:   r.GetProject(),
		Username:  r.GetUsername(),
		Config:    r.GetConfig(),
		Mechanism: r.GetMechanism(),
		Reply:     r.GetReply(),
	})
	if err != nil {
		if st := contextStatus(ctx, err); st != nil {
			return nil, st
		}
		kind, reason := errorKind(err)
		return &pb.RejectedResponse{Error: kind, Reason: reason}, nil
	}
	return &pb.RejectedResponse{}, nil
}

// contextStatus returns a gRPC status error when the provider gave up because its context ended,
// so the host sees cancellation and deadline as such rather than as a provider failure.
func contextStatus(ctx context.Context, err error) error {
	if ctx.Err() == nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		return nil
	}
	cause := ctx.Err()
	if cause == nil {
		cause = err
	}
	return status.FromContextError(cause).Err()
}

// errorKind maps a provider's error to the wire. Errors other than the two typed ones are
// temporary: an operational fault never bounces mail.
func errorKind(err error) (pb.ErrorKind, string) {
	var reauth *NeedsReauthError
	if errors.As(err, &reauth) {
		return pb.ErrorKind_ERROR_KIND_NEEDS_REAUTH, reauth.Reason
	}
	var temp *TemporaryError
	if errors.As(err, &temp) {
		return pb.ErrorKind_ERROR_KIND_TEMPORARY, temp.Reason
	}
	return pb.ErrorKind_ERROR_KIND_TEMPORARY, err.Error()
}

// kindError turns a non-OK error kind from the wire back into the typed error.
func kindError(kind pb.ErrorKind, reason string) error {
	switch kind {
	case pb.ErrorKind_ERROR_KIND_OK:
		return nil
	case pb.ErrorKind_ERROR_KIND_NEEDS_REAUTH:
		return &NeedsReauthError{Reason: reason}
	case pb.ErrorKind_ERROR_KIND_TEMPORARY:
		return &TemporaryError{Reason: reason}
	default:
		return &TemporaryError{Reason: fmt.Sprintf("unknown error kind %d: %s", kind, reason)}
	}
}

// grpcClient runs in Postern and calls the provider process.
type grpcClient struct {
	c pb.CredentialProviderClient
}

var _ Provider = (*grpcClient)(nil)

func (c *grpcClient) Credential(ctx context.Context, req Request) (Credential, error) {
	r, err := c.c.Credential(ctx, &pb.CredentialRequest{
		Project:      req.Project,
		Username:     req.Username,
		Config:       req.Config,
		ForceRefresh: req.ForceRefresh,
	})
	if err != nil {
		return Credential{}, callError(ctx, "credential", req.Project, err)
	}
	if err := kindError(r.GetError(), r.GetReason()); err != nil {
		return Credential{}, err
	}
	cred := Credential{
		Mechanism: strings.ToUpper(r.GetMechanism()),
		Username:  r.GetUsername(),
		Secret:    NewSecret(r.GetSecret()),
	}
	if cred.Username == "" {
		cred.Username = req.Username
	}
	if r.GetExpiry() != 0 {
		cred.Expiry = time.Unix(r.GetExpiry(), 0)
	}
	if err := cred.validate(); err != nil {
		return Credential{}, fmt.Errorf("credential provider answered for project %q: %w", req.Project, err)
	}
	return cred, nil
}

func (c *grpcClient) Rejected(ctx context.Context, req RejectedRequest) error {
	r, err := c.c.Rejected(ctx, &pb.RejectedRequest{
		Project:   req.Project,
		Username:  req.Username,
		Config:    req.Config,
		Mechanism: req.Mechanism,
		Reply:     req.Reply,
	})
	if err != nil {
		return callError(ctx, "rejected", req.Project, err)
	}
	return kindError(r.GetError(), r.GetReason())
}

// validate checks what the host can use; it never mentions the secret's value.
func (c Credential) validate() error {
	var problems []string
	switch c.Mechanism {
	case MechanismPlain, MechanismLogin, MechanismXOAuth2:
	default:
		problems = append(problems, fmt.Sprintf("unknown mechanism %q (want PLAIN, LOGIN or XOAUTH2)", c.Mechanism))
	}
	if c.Username == "" {
		problems = append(problems, "empty username")
	}
	if c.Secret.IsZero() {
		problems = append(problems, "empty secret")
	}
	if len(problems) > 0 {
		return errors.New("unusable credential: " + strings.Join(problems, ", "))
	}
	return nil
}

// errUnavailable marks a call that failed because the provider process could not be reached
// (it died, or its connection broke); the host restarts the process and tries once more.
var errUnavailable = errors.New("credential provider unavailable")

// callError describes a failed gRPC call. The caller's own cancellation or deadline is returned
// as ctx's error so errors.Is(err, context.DeadlineExceeded) works across the boundary.
func callError(ctx context.Context, method, project string, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("calling credential provider %s for project %q: %w", method, project, ctxErr)
	}
	switch status.Code(err) {
	case codes.Canceled:
		return fmt.Errorf("calling credential provider %s for project %q: %w", method, project, context.Canceled)
	case codes.DeadlineExceeded:
		return fmt.Errorf("calling credential provider %s for project %q: %w", method, project, context.DeadlineExceeded)
	case codes.Unavailable:
		return fmt.Errorf("calling credential provider %s for project %q: %w: %v", method, project, errUnavailable, err)
	}
	return fmt.Errorf("calling credential provider %s for project %q: %w", method, project, err)
}
