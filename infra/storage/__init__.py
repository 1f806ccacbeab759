"""The bucket interface and its folder and S3 backends.

The ground floor: everything above may import it; it imports no other dropgpu
package except the exception root in infra.errors.
"""
