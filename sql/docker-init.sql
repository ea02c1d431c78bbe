-- First start of the Docker image (Dockerfile.postgres): the extension, before sql/schema.sql.
CREATE EXTENSION IF NOT EXISTS threadcast;
