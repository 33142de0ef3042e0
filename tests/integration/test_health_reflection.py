"""grpc.health.v1 and server reflection on a running server."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from .support import rpc_error

SERVICES = (
    "sessionrec.v1.SessionService",
    "sessionrec.v1.RecommendationService",
    "sessionrec.v1.CatalogService",
    "sessionrec.v1.AdminService",
)


@pytest.mark.parametrize("service", ["", *SERVICES])
def test_health_serving(client, service):
    reply = client.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_unknown_service_is_not_found(client):
    err = rpc_error(client.health.Check, health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_health_reports_not_serving_while_draining(start_server):
    """stop() flips every service to NOT_SERVING before draining; simulate that window."""
    srv = start_server()
    srv.server.set_serving(False)
    reply = srv.health.Check(
        health_pb2.HealthCheckRequest(service="sessionrec.v1.RecommendationService"), timeout=10
    )
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    srv.server.set_serving(True)


def test_reflection_lists_the_services(client):
    db = ProtoReflectionDescriptorDatabase(client.channel)
    services = set(db.get_services())
    assert set(SERVICES) <= services
    assert "grpc.health.v1.Health" in services

    # The descriptors served are complete enough to build a client from.
    pool = descriptor_pool.DescriptorPool(db)
    recs = pool.FindServiceByName("sessionrec.v1.RecommendationService")
    assert {m.name for m in recs.methods} == {"Recommend", "SimilarItems"}
    sessions = pool.FindServiceByName("sessionrec.v1.SessionService")
    assert {m.name for m in sessions.methods} == {
        "StartSession",
        "TrackEvents",
        "StreamEvents",
        "EndSession",
        "GetSession",
    }
    catalog = pool.FindServiceByName("sessionrec.v1.CatalogService")
    assert {m.name for m in catalog.methods} == {"UpsertItems", "GetItem"}
    admin = pool.FindServiceByName("sessionrec.v1.AdminService")
    assert {m.name for m in admin.methods} == {"ReloadModel", "GetModelInfo", "DeleteUser"}
    event = pool.FindMessageTypeByName("sessionrec.v1.Event")
    assert event.fields_by_name["timestamp"].message_type.full_name == "google.protobuf.Timestamp"
